"""The `tablemig` command line."""
