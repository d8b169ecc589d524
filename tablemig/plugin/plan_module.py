"""What a plan module declares, read and checked once, when pytest collects it.

A plan module holds `PLAN = PlanConfig(...)`, and two forms are accepted:

* **short form** (what `tablemig new-plan` writes): nothing else is needed. The plugin makes
  one test per checklist item, in checklist order, under the item's name in
  `tablemig.checklist.items.TEST_NAMES`; each runs the item's library step
  (`tablemig.checklist.registry.STEPS`), or the module's `@replace(ID)` function, then the
  module's `@after(ID)` check.
* **long form**: test functions marked `@step(ID)`; they are the plan's items, and only
  those run (a module may hold a few items only).

A module with both `@step` test functions and `@after` / `@replace` is refused: the
additions belong to the generated items, and a long-form module writes its extra checks
into its own test functions. So are unknown item ids, an item replaced twice or given two
`@after` checks, and a function of the short form's test names defined by the module itself.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from ..checklist.context import StepContext
from ..checklist.items import ITEMS, ORDER, TEST_NAMES
from ..checklist.registry import STEPS
from ..config.plan import ADDITIONS, ITEM, Addition, PlanConfig
from ..errors import InputError

GENERATED = "tablemig_generated"  # attribute of the tests this module makes
ItemTest = Callable[[StepContext], None]
UNKNOWN_FIX = "use an id of the checklist (tablemig.checklist.items), e.g. EX-4.1"


@dataclass(frozen=True)
class PlanModule:
    name: str
    plan: PlanConfig
    steps: dict[str, str]  # long form: test function name -> checklist item id
    additions: list[Addition]

    @property
    def long_form(self) -> bool:
        return bool(self.steps)

    def replacement(self, item_id: str) -> Addition | None:
        return next((a for a in self.additions if a.kind == "replace" and a.item_id == item_id), None)

    def checks_after(self, item_id: str) -> list[Addition]:
        return [a for a in self.additions if a.kind == "after" and a.item_id == item_id]


def plan_of(module: object) -> PlanConfig | None:
    """The module's `PLAN`, when it is a plan module."""
    plan = getattr(module, "PLAN", None)
    return plan if isinstance(plan, PlanConfig) else None


def read_plan_module(module: ModuleType) -> PlanModule | None:
    """The plan module's declarations, checked; None for any other module. Raises
    InputError naming the module, the problem and the fix."""
    plan = plan_of(module)
    if plan is None:
        return None
    own = {name: obj for name, obj in vars(module).items() if not _generated(obj)}
    steps: dict[str, str] = {}
    additions: list[Addition] = []
    for name, obj in own.items():
        if not inspect.isfunction(obj):
            continue
        item_id = getattr(obj, ITEM, None)
        if isinstance(item_id, str):
            steps[name] = item_id
        for addition in getattr(obj, ADDITIONS, []):
            if isinstance(addition, Addition) and addition not in additions:  # a function under two names
                additions.append(addition)
    found = PlanModule(module.__name__, plan, steps, additions)
    _check(found, set(own))
    return found


def _generated(obj: object) -> bool:
    """One of the tests made here (set on the module when it was collected before)."""
    return inspect.isfunction(obj) and bool(getattr(obj, GENERATED, False))


def _check(pm: PlanModule, names: set[str]) -> None:
    """The plan module names known checklist items, uses one form, adds one function of a
    kind per item, and defines no test of the plugin's own; else InputError."""
    _check_item_ids(pm)
    if pm.long_form and pm.additions:
        raise InputError(
            f"{pm.name} mixes the two plan forms: @step test functions ({', '.join(sorted(pm.steps))}) and "
            f"@after/@replace ({', '.join(a.where for a in pm.additions)})",
            "remove the @step functions (every checklist item then runs, with your additions), or write the "
            "extra check into the @step function itself")
    _check_one_addition_each(pm)
    if not pm.long_form:
        for item_id, test_name in TEST_NAMES.items():
            if test_name in names:
                raise InputError(f"{pm.name} defines {test_name}, the test the plugin makes for {item_id}",
                                 f"rename it, or carry out the item your way with @replace({item_id!r})")


def _check_item_ids(pm: PlanModule) -> None:
    for item_id in pm.plan.attestations:
        if item_id not in ITEMS:
            raise InputError(f"attestation for unknown checklist item {item_id!r}",
                             "use an id from the checklist, e.g. PRE-3.2")
    for name, item_id in pm.steps.items():
        if item_id not in ITEMS:
            raise InputError(f"{pm.name}: @step({item_id!r}) on {name}: unknown checklist item", UNKNOWN_FIX)
    for a in pm.additions:
        if a.item_id not in ITEMS:
            raise InputError(f"{pm.name}: @{a.kind}({a.item_id!r}) on {a.where}: unknown checklist item", UNKNOWN_FIX)


def _check_one_addition_each(pm: PlanModule) -> None:
    for kind in ("replace", "after"):
        for item_id in ORDER:
            same = [a for a in pm.additions if a.kind == kind and a.item_id == item_id]
            if len(same) > 1:
                raise InputError(f"{pm.name}: {item_id} has {len(same)} @{kind} functions: "
                                 + ", ".join(a.where for a in same),
                                 "keep one: an item is carried out once" if kind == "replace"
                                 else "put the checks into one function")


def item_tests(pm: PlanModule) -> list[tuple[str, str, ItemTest]]:
    """Short form: (test name, item id, test function) of every checklist item, in order."""
    return [(TEST_NAMES[item_id], item_id, _item_test(pm, item_id)) for item_id in ORDER]


def _item_test(pm: PlanModule, item_id: str) -> ItemTest:
    replacement = pm.replacement(item_id)
    checks = pm.checks_after(item_id)
    carry_out = replacement.function if replacement is not None else STEPS[item_id]

    def test(ctx: StepContext) -> None:
        if replacement is not None:  # an auditor sees that the library's step did not run
            ctx.evidence(replaced_by=replacement.where)
        carry_out(ctx)
        if checks:
            ctx.evidence(checks_after=[c.where for c in checks])
        for check in checks:
            try:
                check.function(ctx)
            except AssertionError as exc:
                raise AssertionError(f"{check.where}, after {item_id}: {exc}") from exc

    test.__name__ = test.__qualname__ = TEST_NAMES[item_id]
    test.__module__ = pm.name
    test.__doc__ = f"{item_id} {ITEMS[item_id].text}."
    setattr(test, GENERATED, True)
    return test
