"""Benchmarks of tablemig against the physical limits of the work it does.

    python -m bench --help        # the phases and their options (bench/cli.py)
    python -m bench.summary       # docs/benchmarks.md from the result files

Modules: `cli` (command line), `server` (the durable sandbox or a reused server), `source`
(the data and the planner's cutoff), `runs` (fresh copies; tablemig, the physical limit and
the naive way), `physical` (physical limits), `workstats` (work measures from the server's
statistics), `pgbench`, `proc` (subprocesses and their peak RSS), `results` (result files),
`summary`, and one module per phase in `phases/`.
"""
