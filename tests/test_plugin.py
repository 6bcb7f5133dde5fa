"""The twistd plugin is found, and ships in the wheel (the daphne PR 507 lesson)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

ROOT = Path(__file__).resolve().parents[1]


def test_sipproxy_is_a_twistd_plugin() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "sipproxy" in makers
    assert makers["sipproxy"].options().__class__.__name__ == "Options"


def test_wheel_ships_plugin_templates_accelerator_and_no_twisted_init(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    [wheel] = tmp_path.glob("sipproxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/sipproxy_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "sipproxy/templates/bindings.html" in names
    assert "sipproxy/message/parser.py" in names
    # setup.py's optional C accelerator, built where a C compiler is (the README's machine has one)
    assert any(n.startswith("sipproxy/message/_speedups.") and n.endswith(".so") for n in names)


def test_every_subpackage_is_listed_in_setup_cfg() -> None:
    listed = {
        line.strip()
        for line in (ROOT / "setup.cfg").read_text().split("packages =", 1)[1].split("package_dir", 1)[0].splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    present = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sipproxy").rglob("__init__.py")}
    assert present <= listed
