"""`tablemig health`: the migrations' health for cron and monitoring systems.

Formats: `text` (the first line is a monitoring plugin's status line with performance
data), `json`, `prometheus` (the text exposition format, for node_exporter's textfile
collector or a scrape through a wrapper). Exit codes are the monitoring plugins' own:
0 OK, 1 WARNING, 2 CRITICAL (an alert of `health_check()`, e.g. the passive site lagging
past `max_replication_lag`), 3 UNKNOWN (no answer: the server is unreachable, the DSN is
malformed, the schema is missing, the command line is wrong).
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterable
from typing import Any

from ..errors import TablemigError
from ..pg.connect import connect
from ..pg.health import STATE_NAMES, UNKNOWN, Health, read_health, status_code
from ..pg.replication import LagLimit
from .conventions import add_dsn, dsn_of

FORMATS = ("text", "json", "prometheus")


# -- text ------------------------------------------------------------------------------------
def _perfdata(sites: list[Health]) -> str:
    limit = _limit(sites)
    crit = f"{limit.value:.0f}" if limit and limit.kind == "bytes" else ""
    out = []
    for h in sites:
        for s in h.standbys:
            name = f"{h.site}_{s['application_name']}".replace("'", "_")
            out.append(f"'lag_bytes_{name}'={s['lag_bytes'] or 0}B;;{crit};0;")
    return " ".join(out)


def text(sites: list[Health]) -> str:
    """A monitoring plugin's status line, then one line per check."""
    code = max(h.code for h in sites)
    bad = [(h.site, c) for h in sites for c in h.checks if status_code(c["status"]) == code and code]
    summary = "; ".join(f"{c['check_name']}{' ' + c['table_name'] if c['table_name'] else ''}: {c['observed']}"
                        f" (threshold {c['threshold']}; {c['detail']})" for _, c in bad[:3])
    if not summary:
        n = sum(len(h.checks) for h in sites)
        summary = f"{n} check{'' if n == 1 else 's'} ok"
    perf = _perfdata(sites)
    lines = [f"TABLEMIG {STATE_NAMES[code]} - {summary}" + (f" | {perf}" if perf else "")]
    for h in sites:
        for c in h.checks:
            where = f" {c['table_name']}" if c["table_name"] else ""
            lines.append(f"{h.site:7} {c['status']:7} {c['check_name']}{where}: {c['observed']} "
                         f"(threshold {c['threshold']}) - {c['detail']}")
    return "\n".join(lines)


def as_json(sites: list[Health]) -> dict[str, Any]:
    code = max(h.code for h in sites)
    return {"status": STATE_NAMES[code], "code": code,
            "sites": [{"site": h.site, "status": STATE_NAMES[h.code], "checks": h.checks, "standbys": h.standbys,
                       "migrations": h.migrations, "max_replication_lag": h.max_replication_lag} for h in sites]}


# -- prometheus ----------------------------------------------------------------------------------
def _escape(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _sample(name: str, labels: dict[str, Any], value: float) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{inner}}} {_number(value)}" if inner else f"{name} {_number(value)}"


class Exposition:
    """Metric families in the Prometheus text format: HELP and TYPE once, then the samples."""

    def __init__(self) -> None:
        self.families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, help: str, labels: dict[str, Any], value: float | None, kind: str = "gauge") -> None:
        family = self.families.setdefault(name, (help, kind, []))
        if value is not None:
            family[2].append(_sample(name, labels, float(value)))

    def render(self) -> str:
        out = []
        for name, (help, kind, samples) in self.families.items():
            out += [f"# HELP {name} {_escape(help)}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


def _limit(sites: Iterable[Health]) -> LagLimit | None:
    for h in sites:
        if h.max_replication_lag:
            try:
                return LagLimit.parse(h.max_replication_lag)
            except TablemigError:
                return None
    return None


def prometheus(sites: list[Health] | None, error: str | None = None) -> str:
    """The health as metrics (`tablemig_...`); when it could not be read, only the status
    UNKNOWN and `tablemig_health_up 0`."""
    e = Exposition()
    e.add("tablemig_health_up", "1 when the health checks could be read, 0 when not (see the command's stderr)",
          {}, 0 if sites is None else 1)
    e.add("tablemig_health_status", "worst status of the health checks: 0 OK, 1 warning, 2 critical, 3 unknown",
          {}, UNKNOWN if sites is None else max(h.code for h in sites))
    if sites is None:
        return e.render()
    worst: dict[tuple[str, str, str], int] = {}
    for h in sites:
        for c in h.checks:
            key = (h.site, c["check_name"], c["table_name"] or "")
            worst[key] = max(worst.get(key, 0), status_code(c["status"]))
    for (site, check, table), code in worst.items():
        e.add("tablemig_health_check_status", "status of one check of table_migration.health_check(): 0 ok, "
              "1 warning, 2 alert, 3 unknown", {"site": site, "check": check, "table": table}, code)
    limit = _limit(sites)
    if limit is not None:
        unit = "bytes" if limit.kind == "bytes" else "seconds"
        e.add(f"tablemig_replication_lag_limit_{unit}", "max_replication_lag from migration_config", {}, limit.value)
    for h in sites:
        for s in h.standbys:
            labels = {"site": h.site, "standby": s["application_name"]}
            e.add("tablemig_replication_lag_bytes", "WAL the standby has not replayed yet", labels, s["lag_bytes"])
            e.add("tablemig_replication_lag_seconds", "replay lag in seconds while WAL is left to replay "
                  "(0 when caught up)", labels, s["lag_seconds"] or 0)
    for m in (sites[0].migrations if sites else []):
        t = {"table": m["table_name"]}
        e.add("tablemig_migration_info", "the migration state of each table (value 1)", {**t, "state": m["state"]}, 1)
        e.add("tablemig_migration_rows_copied", "rows copied into the new table", t, m["rows_copied"])
        e.add("tablemig_migration_rows_to_copy", "rows to copy into the new table", t, m["rows_to_copy"])
        e.add("tablemig_migration_paused", "1 while the migration is paused (tablemig pause)", t, int(m["paused"]))
        e.add("tablemig_migration_seconds_since_update", "seconds since the migration state last changed", t,
              m["seconds_since_update"])
        if m["lock_hold_ms"] is not None:
            e.add("tablemig_swap_lock_hold_seconds", "how long the swap held its exclusive lock", t,
                  float(m["lock_hold_ms"]) / 1000)
    return e.render()


# -- the command ----------------------------------------------------------------------------------
def _passive_dsn(a: argparse.Namespace) -> str | None:
    # no fallback to libpq's PG* variables: they name the active site
    return a.passive_dsn or os.environ.get("TABLEMIG_PASSIVE_DSN", "").strip() or None


def cmd_health(a: argparse.Namespace) -> int:
    fmt = "json" if a.json else a.format
    try:
        sites = []
        with connect(dsn_of(a), application_name="tablemig-health") as conn:
            sites.append(read_health(conn, site="active"))
        passive = _passive_dsn(a)
        if passive:
            with connect(passive, application_name="tablemig-health") as conn:
                sites.append(read_health(conn, site="passive"))
    except TablemigError:
        if fmt == "prometheus":  # a scrape still gets the verdict
            print(prometheus(None), end="")
        raise
    if fmt == "prometheus":
        print(prometheus(sites), end="")
    elif fmt == "json":
        print(json.dumps(as_json(sites), indent=2, default=str))
    else:
        print(text(sites))
    return max(h.code for h in sites)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("health", help="health of the migrations, for cron and monitoring: exit 0 OK, 1 warning, "
                                      "2 critical, 3 unknown", description=__doc__.split("\n\n")[0])
    add_dsn(p)
    p.add_argument("--passive-dsn", default=None,
                   help="also check the passive site itself (default: $TABLEMIG_PASSIVE_DSN; none without it)")
    p.add_argument("--format", choices=FORMATS, default="text", help="output format (default: text)")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.set_defaults(func=cmd_health)
