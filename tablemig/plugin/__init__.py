"""The pytest plugin, one module per concern (each registered by entry point):

* `options`: the command-line options, refused early when they make no sense;
* `fixtures`: the embedded sandbox and the sites (`active_dsn`, `passive`, ...);
* `plan_module` and `collection`: a plan module read and checked, its tests made from the
  checklist (one per item, per table), `@after` / `@replace` applied;
* `run`: the run's record, the plan's set-up and each step's `ctx`;
* `outcomes`: pytest's outcome of a test as the step's status, blocking later steps;
* `xdist_order`: checklist order across pytest-xdist workers;
* `reporting`: the reports at the end of the session, the verdict and the exit status;
* `steps`: the names long-form plan modules import.
"""
