# Sourced by scripts/bootstrap.sh: which PostgreSQL this machine has, and which of tablemig's
# extras it needs. TABLEMIG_EXTRAS overrides the choice; otherwise the caller's needs
# (TABLEMIG_NEEDS: scripts/test asks for dev, and embedded for the second server version its
# tests compare) plus `embedded` only when no PostgreSQL server binaries are on the machine.
# `docker` is installed only on request (TABLEMIG_EXTRAS=...,docker).

have_pg() {
    [ -n "${TABLEMIG_PG_BIN:-}" ] && return 0
    local pg_config="${TABLEMIG_PG_CONFIG:-pg_config}"
    command -v "$pg_config" >/dev/null 2>&1 && [ -x "$("$pg_config" --bindir)/postgres" ] && return 0
    compgen -G "${TABLEMIG_PG_SEARCH:-/usr/lib/postgresql}/*/bin/postgres" >/dev/null && return 0
    return 1
}

tablemig_extras() {
    if [ -n "${TABLEMIG_EXTRAS+x}" ]; then
        echo "$TABLEMIG_EXTRAS"
        return
    fi
    local extras="${TABLEMIG_NEEDS:-}"
    if ! have_pg && [[ ",$extras," != *",embedded,"* ]]; then
        extras="${extras:+$extras,}embedded"
    fi
    echo "$extras"
}
