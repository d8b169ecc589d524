#!/usr/bin/env python3
"""Former entry point, kept for existing command lines: `python bench/bench.py ARGS` runs
`python -m bench ARGS` (see bench/cli.py)."""

import sys
from pathlib import Path

# run as a script, this directory is first on sys.path and `bench` would be this file
sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.cli import entry  # noqa: E402

entry()
