"""The layer contracts of docs/architecture.md, checked by import-linter (``[tool.importlinter]`` in pyproject.toml).

A module that imports upwards -- the transport reaching for the
transaction layer, the message layer for Twisted -- fails this test with
import-linter's report of the offending import chain.  import-linter runs
in a process of its own: after other tests have loaded Twisted's plugins,
zope.interface has decorated ``abc.ABC`` with an attribute that
import-linter's contract classes trip over.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LINT = """
import sys
from importlinter import cli
sys.exit(cli.lint_imports(config_filename=sys.argv[1], no_cache=True))
"""


def test_every_layer_contract_is_kept() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = result.stdout + result.stderr
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken\.", report), report
    assert result.returncode == 0, report
