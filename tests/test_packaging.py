"""tablemig as users install it: the wheel (built from this tree, installed with its
dependencies into a fresh virtualenv, not editable; the `installed_wheel` fixture) holds
every package and template of the source tree and works from a directory outside the
repository: the schema, the CLI, `new-plan` and the plan it writes, dry run and --execute."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from tablemig.pg.connect import connect

REPO = Path(__file__).resolve().parents[1]

SNIPPET = textwrap.dedent("""
    import json, sys
    import tablemig
    from tablemig.pg import schema, templating
    from tablemig.pg.connect import connect

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


def source_files(top: str) -> list[str]:
    """Every file under `REPO/top` (bytecode caches aside), relative to REPO/top."""
    return sorted(p.relative_to(REPO / top).as_posix() for p in (REPO / top).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_the_wheel_ships_every_package_and_template_of_the_source_tree(installed_wheel: Any) -> None:
    names = installed_wheel.names
    packages = {p.relative_to(REPO).as_posix() for p in (REPO / "tablemig").rglob("*")
                if p.is_dir() and p.name != "__pycache__"}
    assert "tablemig/checklist/steps" in packages  # the walk sees nested subpackages
    missing = [f"tablemig/{f}" for f in source_files("tablemig") if f"tablemig/{f}" not in names]
    assert not missing, f"files of the source tree missing from {installed_wheel.wheel.name}: {missing}"
    for package in packages:
        assert any(n.startswith(f"{package}/") for n in names), f"subpackage {package} missing"
    templates = source_files("sql_templates")
    assert any(t.endswith(".j2") for t in templates)
    missing = [t for t in templates if f"tablemig/sql_templates/{t}" not in names]
    assert not missing, f"templates missing from the wheel: {missing}"
    assert not any(n.startswith(("tests/", "sql_templates/", "plans/", "bench/")) for n in names)
    entry_points = next(installed_wheel.wheel_text(n) for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "tablemig = tablemig.cli.main:main" in entry_points
    assert "tablemig = tablemig.plugin.options" in entry_points  # the pytest11 plugin (its first module)


def test_the_installed_wheel_installs_the_schema_from_its_own_templates(
        installed_wheel: Any, fresh_db: Any, tmp_path: Path) -> None:
    out = installed_wheel.run("python", "-c", SNIPPET, fresh_db.dsn, cwd=tmp_path)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    venv = installed_wheel.venv
    assert Path(report["file"]).is_relative_to(venv), report["file"]
    assert Path(report["template_root"]).is_relative_to(venv), report["template_root"]
    assert Path(report["row_sync"]).is_relative_to(venv), report["row_sync"]
    assert report["statements"] >= 2
    assert report["action"] == "installed"
    assert {"get_config", "cutoff_value", "health_check", "validate_table_structure"} <= set(report["functions"])
    # the console script of the wheel works too
    cli = installed_wheel.run("tablemig", "install-schema", "--dsn", fresh_db.dsn, cwd=tmp_path)
    assert "unchanged" in cli.stdout


def test_new_plan_dry_run_and_execute_from_the_installed_wheel(
        installed_wheel: Any, fresh_db: Any, tmp_path: Path) -> None:
    work = tmp_path / "elsewhere"  # outside the repository: nothing of the source tree is importable
    work.mkdir()
    assert not work.resolve().is_relative_to(REPO)
    installed_wheel.run("tablemig", "demo-data", "--dsn", fresh_db.dsn, "--rows", "4000", cwd=work)
    made = installed_wheel.run("tablemig", "new-plan", "--table", "public.orders", "--date-column", "created_date",
                               "--retention", "0.2", "--batch-size", "500", "--output", "orders_plan.py", cwd=work)
    assert "checklist steps" in made.stdout, made.stdout
    sites = ["--active-dsn", fresh_db.dsn, "--passive-dsn", fresh_db.passive_dsn, "--reports-dir", "reports",
             "-p", "no:cacheprovider"]
    for mode in ("dry-run", "execute"):
        proc = installed_wheel.run("pytest", "orders_plan.py", "-q", *sites,
                                   *(["--execute"] if mode == "execute" else []), cwd=work, check=False)
        assert proc.returncode == 0, f"{mode}:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
        run = json.loads((work / "reports" / "orders_plan" / "latest" / "run.json").read_text())
        assert run["mode"] == mode
        bad = {s["id"]: (s["status"], s.get("reason")) for s in run["steps"] if s["status"] in ("failed", "blocked")}
        assert not bad, bad
    with connect(fresh_db.dsn) as conn:
        st = conn.execute("SELECT state, archive_name FROM table_migration.migration_state").fetchone()
        assert st is not None and st[0] == "swapped", st
        kept = conn.execute("SELECT count(*) FROM orders").fetchone()
        archived = conn.execute(f'SELECT count(*) FROM "{st[1]}"').fetchone()
        assert kept is not None and archived is not None and 0 < kept[0] < archived[0] == 4000
