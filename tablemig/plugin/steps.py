"""The names long-form plan modules import from here (`from tablemig.plugin.steps import
StepContext`); they live in `tablemig.checklist.context` and `tablemig.checklist.record`."""

from __future__ import annotations

from ..checklist.context import NotApplicable, StepContext
from ..checklist.record import RunRecord, StepResult, TableRun

__all__ = ["NotApplicable", "RunRecord", "StepContext", "StepResult", "TableRun"]
