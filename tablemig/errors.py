"""Errors a DBA reads: each names the problem and the fix."""

from __future__ import annotations


class TablemigError(Exception):
    """A refusal or failure with a problem statement and what to do about it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}\n  fix: {fix}" if fix else problem)


class InputError(TablemigError):
    """Bad input: nothing was changed."""


class ConnectionFailed(InputError):
    """The server could not be reached (or refused the login); nothing was changed."""


class LockNotAcquired(TablemigError):
    """The swap could not get its locks within the bounded attempts; nothing was changed."""


class ConcurrentRun(TablemigError):
    """Another run holds the table's migration lock."""
