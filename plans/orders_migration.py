"""The demo plan: shrink public.orders to its newest 10 % of rows.

    pytest plans/orders_migration.py                        # dry run: plans, checks, changes nothing
    pytest plans/orders_migration.py --execute              # apply
    pytest plans/orders_migration.py --execute --rollback   # apply, then roll back (RB-1)
    pytest plans/orders_migration.py --active-dsn DSN [--passive-dsn DSN] [--attest PRE-3.2=alice]

Every checklist item runs, in order. What a DBA may add (`@after`, `@replace`): docs/plans.md.
"""

from tablemig.config.plan import Contact, PlanConfig, TableConfig

PLAN = PlanConfig(
    name="orders_migration",
    tables=[TableConfig("public.orders", date_column="created_date", retention=0.1, archive_mode="rename",
                        batch_size=10000, workers=1,
                        # both reference orders of every age (docs/families.md): the items go to the
                        # archive with their orders, the orders a return references stay live
                        children={"public.order_items": "follow", "public.order_returns": "keep"})],
    demo_rows=100000,  # on the embedded sandbox only: demo data (orders, items, returns) to migrate
    max_replication_lag="16MB",
    app_write_share=None,  # write guard: None = migration_config's (0.9, re-read while running); 0 = off
    window=None,  # e.g. Window("2026-11-21T01:00Z", "2026-11-21T07:00Z")
    notifiers=[{"kind": "file", "path": "reports/orders_migration_notifications.jsonl"}],
    contacts=[
        Contact("DBA Lead", "On-call DBA", "+1-555-0100", "dba-oncall@example.com", "Primary"),
        Contact("App Team Lead", "Orders service owner", "+1-555-0101", "orders-team@example.com", "Secondary"),
        Contact("Operations", "NOC", "+1-555-0102", "noc@example.com", "24/7"),
        Contact("Business Owner", "Head of Sales Ops", "+1-555-0103", "sales-ops@example.com", "Executive"),
    ],
    attestations={},  # e.g. {"PRE-3.2": Attestation("alice", "2026-11-20T10:00Z", "CAB-1234")}
    require_attestations=False,
    allow_passive_down=False,  # True: go ahead when the configured passive site is unreachable
    backup_dir="backups",
    validation_timeout="30min",  # statement_timeout of each check a step makes
)
