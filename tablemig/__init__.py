"""tablemig: plan, rehearse, execute, verify and roll back the table rename strategy."""

__version__ = "0.1.0"
