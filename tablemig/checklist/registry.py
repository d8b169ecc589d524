"""Which library function carries out each checklist item (used by plan modules and by
`tablemig new-plan`, which writes one thin test function per item)."""

from __future__ import annotations

from collections.abc import Callable

from .context import StepContext
from .items import ORDER
from .steps import assessment, backups, execution, monitoring, rollback, scheduling, summary, sync, validation

Step = Callable[[StepContext], None]

STEPS: dict[str, Step] = {
    "PRE-1.1a": assessment.pre_1_1a_only_one_site_active,
    "PRE-1.1b": assessment.pre_1_1b_replication_lag,
    "PRE-1.1c": assessment.pre_1_1c_passive_in_sync,
    "PRE-1.1d": assessment.pre_1_1d_replication_configuration,
    "PRE-1.2a": assessment.pre_1_2a_disk_space,
    "PRE-1.2b": assessment.pre_1_2b_backup_space,
    "PRE-1.2c": assessment.pre_1_2c_cpu_and_memory,
    "PRE-1.2d": assessment.pre_1_2d_network_bandwidth,
    "PRE-1.3a": assessment.pre_1_3a_affected_tables,
    "PRE-1.3b": assessment.pre_1_3b_foreign_keys,
    "PRE-1.3c": assessment.pre_1_3c_application_dependencies,
    "PRE-1.3d": assessment.pre_1_3d_views_procedures_triggers,
    "PRE-2.1": backups.pre_2_1_full_backup,
    "PRE-2.2": backups.pre_2_2_restore_point,
    "PRE-2.3": backups.pre_2_3_test_restore,
    "PRE-2.4": backups.pre_2_4_rollback_plan_executable,
    "PRE-3.1": scheduling.pre_3_1_maintenance_window,
    "PRE-3.2": scheduling.pre_3_2_notify_stakeholders,
    "PRE-3.3": scheduling.pre_3_3_monitoring_dashboard,
    "PRE-3.4": scheduling.pre_3_4_alerting_thresholds,
    "EX-1.1": execution.ex_1_1_deploy_framework,
    "EX-1.2": execution.ex_1_2_configure_parameters,
    "EX-1.3": execution.ex_1_3_analyze_tables,
    "EX-2.1": execution.ex_2_1_create_new_table,
    "EX-2.2": execution.ex_2_2_execute_migration,
    "EX-2.3": execution.ex_2_3_change_capture,
    "EX-3.1": sync.ex_3_1_prepare_passive_site,
    "EX-3.2": sync.ex_3_2_replication_health,
    "EX-3.3": sync.ex_3_3_reenable_replication,
    "EX-4.1": execution.ex_4_1_data_integrity,
    "EX-4.2": validation.ex_4_2_performance,
    "EX-4.3": validation.ex_4_3_application_testing,
    "EX-5.1": monitoring.ex_5_1_health_monitoring,
    "EX-5.2": monitoring.ex_5_2_alerts,
    "POST-1": monitoring.post_1_first_24_hours,
    "POST-2": monitoring.post_2_first_week,
    "POST-3": monitoring.post_3_first_month,
    "RB-1": execution.rb_1_immediate_rollback,
    "RB-2": rollback.rb_2_partial_rollback,
    "RB-3": rollback.rb_3_full_rollback,
    **{f"SC-{i}": summary.success_criterion for i in range(1, 9)},
    "NOTES": summary.notes_and_observations,
    "CONTACTS": summary.emergency_contacts,
}

assert list(STEPS) == ORDER, "every checklist item needs exactly one step, in order"
