"""What the migration logs (phases, backfill progress, pauses, rests) shown live during a
plan run.

pytest captures a test's output, so anything a step writes would reach the screen only after
the step (or never). The `tablemig` logger's INFO records are written through pytest's
terminal reporter with capturing suspended, as pytest's own live logging does; on a
terminal the backfill's progress is one bar redrawn in place (tablemig.report.progress). With
`--log-cli-level` pytest shows them itself (nothing is written twice); `--log-file` keeps
them in a file. Under pytest-xdist the workers' records stay in their captured output.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import pytest

from ..report import progress
from .collection import item_id_of

LOGGER = "tablemig"
_HANDLER = pytest.StashKey["TerminalHandler"]()


class TerminalHandler(logging.Handler):
    """Writes a record on its own line of pytest's terminal, outside the capture."""

    def __init__(self, config: pytest.Config) -> None:
        super().__init__(logging.INFO)
        self.config = config
        self.setFormatter(logging.Formatter("tablemig: %(message)s"))

    bar_open = False

    def emit(self, record: logging.LogRecord) -> None:
        reporter: Any = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            return
        capture: Any = self.config.pluginmanager.get_plugin("capturemanager")
        suspended = capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext()
        try:
            shown = progress.figures(record)
            with suspended:
                if shown is not None and reporter.isatty:  # one bar, redrawn in place
                    reporter.rewrite("tablemig: " + progress.bar(shown), erase=True)
                    self.bar_open = True
                    return
                if self.bar_open:
                    reporter.write("\n")
                    self.bar_open = False
                reporter.ensure_newline()
                reporter.write_line(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never cost a step
            self.handleError(record)


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """A session that runs checklist steps shows the migration's log live."""
    config = session.config
    if getattr(config, "workerinput", None) is not None:
        return
    if config.getoption("log_cli_level", None) or config.getini("log_cli"):
        return  # pytest's live logging shows them
    if not any(item_id_of(item) for item in session.items):
        return
    handler = TerminalHandler(config)
    logger = logging.getLogger(LOGGER)
    logger.addHandler(handler)
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    config.stash[_HANDLER] = handler


def pytest_unconfigure(config: pytest.Config) -> None:
    handler = config.stash.get(_HANDLER, None)
    if handler is not None:
        logging.getLogger(LOGGER).removeHandler(handler)
