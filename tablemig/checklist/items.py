"""The checklist, item by item, in the order and wording of the user's document.

`human` items are confirmed by a person (an attestation) in addition to whatever evidence
the harness can gather; `mutating` items change the database and only act with --execute;
`per_table` items run once for each table of the plan. `TEST_NAMES` names the test of
each item: the plugin generates one test per item under that name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    id: str
    section: str
    text: str
    per_table: bool = False
    mutating: bool = False
    human: bool = False


_S = {
    "PRE-1": "Pre-Execution · 1. Environment Assessment",
    "PRE-2": "Pre-Execution · 2. Backup and Safety Measures",
    "PRE-3": "Pre-Execution · 3. Communication and Scheduling",
    "EX-1": "Execution · Phase 1: Infrastructure Setup (Active Site)",
    "EX-2": "Execution · Phase 2: Table-by-Table Migration",
    "EX-3": "Execution · Phase 3: Replication Synchronization",
    "EX-4": "Execution · Phase 4: Validation and Testing",
    "EX-5": "Execution · Phase 5: Monitoring Setup",
    "POST": "Post-Migration",
    "RB": "Rollback Procedures",
    "SC": "Success Criteria Checklist",
    "END": "Notes and Contacts",
}

_ITEMS = [
    Item("PRE-1.1a", _S["PRE-1"], "Verify replication status: confirm only one site is active for writes"),
    Item("PRE-1.1b", _S["PRE-1"], "Verify replication status: check replication lag is within acceptable limits"),
    Item("PRE-1.1c", _S["PRE-1"], "Verify replication status: verify passive site is in sync", per_table=True),
    Item("PRE-1.1d", _S["PRE-1"], "Verify replication status: document current replication configuration"),
    Item("PRE-1.2a", _S["PRE-1"], "Resource verification: confirm sufficient disk space (3x largest table size)"),
    Item("PRE-1.2b", _S["PRE-1"], "Resource verification: verify backup space availability"),
    Item("PRE-1.2c", _S["PRE-1"], "Resource verification: check CPU and memory resources"),
    Item("PRE-1.2d", _S["PRE-1"], "Resource verification: ensure network bandwidth for replication"),
    Item("PRE-1.3a", _S["PRE-1"], "Dependency mapping: identify all tables that will be affected", per_table=True),
    Item("PRE-1.3b", _S["PRE-1"], "Dependency mapping: map foreign key relationships", per_table=True),
    Item("PRE-1.3c", _S["PRE-1"], "Dependency mapping: document application dependencies", per_table=True,
         human=True),
    Item("PRE-1.3d", _S["PRE-1"], "Dependency mapping: list views, stored procedures, triggers that reference "
         "the tables", per_table=True),
    Item("PRE-2.1", _S["PRE-2"], "Create full backup of active site", mutating=True),
    Item("PRE-2.2", _S["PRE-2"], "Create point-in-time recovery checkpoint", mutating=True),
    Item("PRE-2.3", _S["PRE-2"], "Test restore procedures on test environment", mutating=True),
    Item("PRE-2.4", _S["PRE-2"], "Verify rollback plan is executable"),
    Item("PRE-3.1", _S["PRE-3"], "Schedule maintenance window (minimum recommended: 4-8 hours for large "
         "tables; consider business impact and data volume)", human=True),
    Item("PRE-3.2", _S["PRE-3"], "Notify stakeholders: database administrators, application teams, business "
         "users, operations team", human=True),
    Item("PRE-3.3", _S["PRE-3"], "Prepare monitoring dashboard"),
    Item("PRE-3.4", _S["PRE-3"], "Set up alerting for critical thresholds"),
    Item("EX-1.1", _S["EX-1"], "Step 1.1: Deploy migration framework (execute infrastructure setup scripts; "
         "verify schema creation; test utility functions)", mutating=True),
    Item("EX-1.2", _S["EX-1"], "Step 1.2: Configure migration parameters (set retention percentage; set "
         "batch size based on system capacity)", mutating=True),
    Item("EX-1.3", _S["EX-1"], "Step 1.3: Analyze target tables (run data volume analysis for each table; "
         "document cutoff dates for each table)", per_table=True),
    Item("EX-2.1", _S["EX-2"], "Step 2.1: Create new table structure (design optimized new table; validate "
         "table structure)", per_table=True, mutating=True),
    Item("EX-2.2", _S["EX-2"], "Step 2.2: Execute migration (run dry run first; review dry run results; "
         "execute actual migration; monitor migration progress)", per_table=True, mutating=True),
    Item("EX-2.3", _S["EX-2"], "Step 2.3: Set up change capture (create sync trigger; test trigger "
         "functionality)", per_table=True, mutating=True),
    Item("EX-3.1", _S["EX-3"], "Step 3.1: Prepare passive site (verify DDL replication is working; manual "
         "DDL sync if needed)", per_table=True),
    Item("EX-3.2", _S["EX-3"], "Step 3.2: Verify replication health (check replication lag; verify data "
         "consistency between sites)", per_table=True),
    Item("EX-3.3", _S["EX-3"], "Step 3.3: Re-enable full replication for migrated tables", per_table=True,
         mutating=True),
    Item("EX-4.1", _S["EX-4"], "Step 4.1: Data integrity validation (run comprehensive validation queries; "
         "verify no data loss)", per_table=True),
    Item("EX-4.2", _S["EX-4"], "Step 4.2: Performance testing (query performance on new table; trigger "
         "overhead; application functionality; system resources under load)", per_table=True),
    Item("EX-4.3", _S["EX-4"], "Step 4.3: Application testing (read operations; write operations through "
         "triggers; application error handling; failover scenarios)", per_table=True),
    Item("EX-5.1", _S["EX-5"], "Step 5.1: Configure ongoing monitoring (health check monitoring; schedule "
         "periodic health checks)", mutating=True),
    Item("EX-5.2", _S["EX-5"], "Step 5.2: Alert configuration (replication lag; failed trigger executions; "
         "unusual data volume changes; archive table growth rate; dashboard for operations team)"),
    Item("POST-1", _S["POST"], "Immediate tasks (first 24 hours): monitor system stability; verify data sync; "
         "check application performance; review error logs; validate replication health"),
    Item("POST-2", _S["POST"], "Short-term tasks (first week): daily data integrity checks; performance "
         "monitoring and tuning; review trigger performance; user feedback; lessons learned"),
    Item("POST-3", _S["POST"], "Long-term tasks (first month): plan original table cleanup (after business "
         "approval); archive old audit logs; update documentation; train team; plan future migrations",
         human=True),
    Item("RB-1", _S["RB"], "Immediate rollback: drop triggers; restore from backup if needed; re-enable "
         "original table usage; notify stakeholders", per_table=True, mutating=True),
    Item("RB-2", _S["RB"], "Partial rollback: disable triggers; restore recent data from original table to "
         "new table; fix issues and re-enable", per_table=True),
    Item("RB-3", _S["RB"], "Full rollback: restore from point-in-time backup; re-sync replication; validate "
         "data consistency; perform root cause analysis"),
    Item("SC-1", _S["SC"], "All new data flows through new table structure"),
    Item("SC-2", _S["SC"], "Historical data preserved in archive tables"),
    Item("SC-3", _S["SC"], "Replication lag within acceptable limits (<5 minutes)"),
    Item("SC-4", _S["SC"], "Application performance maintained or improved"),
    Item("SC-5", _S["SC"], "No data loss confirmed through validation"),
    Item("SC-6", _S["SC"], "Monitoring and alerting operational"),
    Item("SC-7", _S["SC"], "Team trained on new procedures", human=True),
    Item("SC-8", _S["SC"], "Documentation updated and complete", human=True),
    Item("NOTES", _S["END"], "Notes and Observations: migration date, executed by, duration, issues "
         "encountered, performance observations, recommendations"),
    Item("CONTACTS", _S["END"], "Emergency Contacts"),
]

ITEMS: dict[str, Item] = {i.id: i for i in _ITEMS}
ORDER: list[str] = [i.id for i in _ITEMS]

# The test of each item as pytest's node ids, `-k` and JUnit show it (per-table items get
# the table as parameter: `test_pre_1_1c_passive_in_sync[public.orders]`). CI histories and
# auditors' references follow these names: never rename one.
TEST_NAMES: dict[str, str] = {
    "PRE-1.1a": "test_pre_1_1a_only_one_site_active",
    "PRE-1.1b": "test_pre_1_1b_replication_lag",
    "PRE-1.1c": "test_pre_1_1c_passive_in_sync",
    "PRE-1.1d": "test_pre_1_1d_replication_configuration",
    "PRE-1.2a": "test_pre_1_2a_disk_space",
    "PRE-1.2b": "test_pre_1_2b_backup_space",
    "PRE-1.2c": "test_pre_1_2c_cpu_and_memory",
    "PRE-1.2d": "test_pre_1_2d_network_bandwidth",
    "PRE-1.3a": "test_pre_1_3a_affected_tables",
    "PRE-1.3b": "test_pre_1_3b_foreign_keys",
    "PRE-1.3c": "test_pre_1_3c_application_dependencies",
    "PRE-1.3d": "test_pre_1_3d_views_procedures_triggers",
    "PRE-2.1": "test_pre_2_1_full_backup",
    "PRE-2.2": "test_pre_2_2_restore_point",
    "PRE-2.3": "test_pre_2_3_test_restore",
    "PRE-2.4": "test_pre_2_4_rollback_plan_executable",
    "PRE-3.1": "test_pre_3_1_maintenance_window",
    "PRE-3.2": "test_pre_3_2_notify_stakeholders",
    "PRE-3.3": "test_pre_3_3_monitoring_dashboard",
    "PRE-3.4": "test_pre_3_4_alerting_thresholds",
    "EX-1.1": "test_ex_1_1_deploy_framework",
    "EX-1.2": "test_ex_1_2_configure_parameters",
    "EX-1.3": "test_ex_1_3_analyze_tables",
    "EX-2.1": "test_ex_2_1_create_new_table",
    "EX-2.2": "test_ex_2_2_execute_migration",
    "EX-2.3": "test_ex_2_3_change_capture",
    "EX-3.1": "test_ex_3_1_prepare_passive_site",
    "EX-3.2": "test_ex_3_2_replication_health",
    "EX-3.3": "test_ex_3_3_reenable_replication",
    "EX-4.1": "test_ex_4_1_data_integrity",
    "EX-4.2": "test_ex_4_2_performance",
    "EX-4.3": "test_ex_4_3_application_testing",
    "EX-5.1": "test_ex_5_1_health_monitoring",
    "EX-5.2": "test_ex_5_2_alerts",
    "POST-1": "test_post_1_first_24_hours",
    "POST-2": "test_post_2_first_week",
    "POST-3": "test_post_3_first_month",
    "RB-1": "test_rb_1_immediate_rollback",
    "RB-2": "test_rb_2_partial_rollback",
    "RB-3": "test_rb_3_full_rollback",
    "SC-1": "test_sc_1_success_criterion",
    "SC-2": "test_sc_2_success_criterion",
    "SC-3": "test_sc_3_success_criterion",
    "SC-4": "test_sc_4_success_criterion",
    "SC-5": "test_sc_5_success_criterion",
    "SC-6": "test_sc_6_success_criterion",
    "SC-7": "test_sc_7_success_criterion",
    "SC-8": "test_sc_8_success_criterion",
    "NOTES": "test_notes_and_observations",
    "CONTACTS": "test_contacts_emergency_contacts",
}

assert list(TEST_NAMES) == ORDER, "every checklist item needs exactly one test name, in order"
