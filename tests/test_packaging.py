"""The wheel ships the SQL templates and works without the source tree.

The wheel is built from a copy of the project (so the build writes nothing into the
repository), installed with `--no-deps` into a brand-new virtualenv, and used from a
temporary directory. The outer venv's dependencies are made visible through a `.pth`
file naming its site-packages: `.pth` files *inside* that directory (the editable
install's finder) are not processed, so the only `tablemig` there is the wheel's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

SNIPPET = textwrap.dedent("""
    import json, sys
    import tablemig
    from tablemig import schema, templating
    from tablemig.db import connect

    statements = schema.render_schema()
    with connect(sys.argv[1]) as conn:
        result = schema.install_schema(conn)
        functions = [r[0] for r in conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'table_migration'::regnamespace")]
    print(json.dumps({
        "file": tablemig.__file__,
        "template_root": str(templating._template_root()),
        "statements": len(statements),
        "action": result.action,
        "functions": functions,
        "row_sync": templating.environment().get_template("row_sync_function.sql.j2").filename,
    }))
""")


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    return out


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INDEX"] = "1"  # nothing may come from the network
    return env


def build_wheel(tmp: Path) -> Path:
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in ("tablemig", "sql_templates"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src / name)
    dist = tmp / "dist"
    # --no-isolation: the build backend comes from this venv, not from the network
    run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(src)],
        cwd=src, env=clean_env())
    wheels = list(dist.glob("tablemig-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_ships_templates_and_installs_schema_from_a_clean_venv(tmp_path: Path, fresh_db: Any) -> None:
    wheel = build_wheel(tmp_path)

    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    for required in ("tablemig/sql_templates/schema/001_tables.sql.j2",
                     "tablemig/sql_templates/schema/002_functions.sql.j2",
                     "tablemig/sql_templates/row_sync_function.sql.j2",
                     "tablemig/schema.py", "tablemig/templating.py", "tablemig/plugin.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    # every template of the source tree is shipped, under the package name
    for template in (REPO / "sql_templates").rglob("*.j2"):
        rel = template.relative_to(REPO / "sql_templates").as_posix()
        assert f"tablemig/sql_templates/{rel}" in names, rel
    assert not any(n.startswith(("tests/", "sql_templates/")) for n in names)
    assert "tablemig = tablemig.cli:main" in entry_points
    assert "tablemig = tablemig.plugin" in entry_points  # the pytest11 plugin

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", str(venv)], env=clean_env())
    py = venv / "bin" / "python"
    run([str(py), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)], env=clean_env())

    fresh_site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          env=clean_env()).stdout.strip())
    outer_site = sysconfig.get_paths()["purelib"]
    (fresh_site / "outer_venv_dependencies.pth").write_text(outer_site + "\n")

    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    out = run([str(py), "-c", SNIPPET, fresh_db.dsn], cwd=workdir, env=clean_env())
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(report["file"]).is_relative_to(venv), report["file"]
    assert Path(report["template_root"]).is_relative_to(fresh_site), report["template_root"]
    assert Path(report["row_sync"]).is_relative_to(fresh_site), report["row_sync"]
    assert report["statements"] >= 2
    assert report["action"] == "installed"
    assert {"get_config", "cutoff_value", "health_check", "validate_table_structure"} <= set(report["functions"])

    # the console script of the wheel works too
    cli = run([str(venv / "bin" / "tablemig"), "install-schema", "--dsn", fresh_db.dsn], cwd=workdir, env=clean_env())
    assert "unchanged" in cli.stdout
