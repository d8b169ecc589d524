"""The step of each checklist item, grouped by the checklist's sections."""
