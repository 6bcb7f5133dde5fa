"""The layer contracts of docs/architecture.md, checked by import-linter (``[tool.importlinter]`` in pyproject.toml).

A module that imports upwards -- the transport reaching for the
transaction layer, the message layer for Twisted -- fails this test with
import-linter's report of the offending import chain.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_layer_contract_is_kept(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    exit_code = cli.lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True)
    report = capsys.readouterr().out
    assert "BROKEN" not in report, report
    assert exit_code == cli.EXIT_STATUS_SUCCESS, report
