"""Which packages the distribution ships, found rather than listed (the rest of the
metadata is in pyproject.toml).

Every directory under `tablemig/` is a package of the wheel, so a new subpackage cannot be
left out. The SQL templates live at the top of the repository (where DBAs look for them)
and are shipped as `tablemig.sql_templates`, with every directory below it: pyproject.toml
alone cannot give a directory found outside `tablemig/` a name inside it.
"""

from setuptools import find_namespace_packages, setup

NOT_PACKAGES = ["*.__pycache__", "__pycache__"]

templates = find_namespace_packages(include=["sql_templates", "sql_templates.*"], exclude=NOT_PACKAGES)
setup(
    packages=[*find_namespace_packages(include=["tablemig", "tablemig.*"], exclude=NOT_PACKAGES),
              *(f"tablemig.{p}" for p in templates)],
    package_dir={f"tablemig.{p}": p.replace(".", "/") for p in templates},
)
