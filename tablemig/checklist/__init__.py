"""The checklist: its items in the user's order and wording, and the step that carries out each one."""
