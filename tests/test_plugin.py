"""The twistd plugin is found, and ships in the wheel (the daphne PR 507 lesson)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins

ROOT = Path(__file__).resolve().parents[1]


def test_sipproxy_is_a_twistd_plugin() -> None:
    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
    assert "sipproxy" in makers
    assert makers["sipproxy"].options().__class__.__name__ == "Options"


def c_compiler_available() -> bool:
    """What setup.py's optional accelerator needs to build: the C compiler distutils would run, and Python.h."""
    compiler = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    headers = Path(sysconfig.get_paths()["include"], "Python.h")
    return shutil.which(shlex.split(compiler)[0]) is not None and headers.exists()


def test_wheel_ships_plugin_templates_accelerator_and_no_twisted_init(tmp_path: Path) -> None:
    # Built from a clean copy, as from a fresh clone: no build/ directory or in-place extension to reuse.
    source = tmp_path / "source"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "*.so"),
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        check=True,
    )
    [wheel] = tmp_path.glob("sipproxy-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "twisted/plugins/sipproxy_plugin.py" in names
    assert "twisted/__init__.py" not in names
    assert "twisted/plugins/__init__.py" not in names
    assert "sipproxy/templates/bindings.html" in names
    assert "sipproxy/message/parser.py" in names
    # setup.py's C accelerator is optional: built and used where a C compiler is, else the pure-Python parser.
    built = any(n.startswith("sipproxy/message/_speedups.") and n.endswith(".so") for n in names)
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {k: v for k, v in os.environ.items() if k != "SIPPROXY_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(unpacked)
    parser = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sipproxy.message as m; from sipproxy.message import _accel; "
            "print(m.__file__); print('C' if _accel.parse else 'Python'); "
            "print(m.parse_message(b'OPTIONS sip:a@b SIP/2.0\\r\\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\\r\\n"
            "From: <sip:c@d>;tag=1\\r\\nTo: <sip:a@b>\\r\\nCall-ID: x\\r\\nCSeq: 1 OPTIONS\\r\\n"
            "Content-Length: 0\\r\\n\\r\\n').method)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    where, kind, method = parser.stdout.split()
    assert Path(where).is_relative_to(unpacked) and method == "OPTIONS"
    if c_compiler_available():
        assert built and kind == "C"
    else:
        assert not built and kind == "Python"


def test_every_subpackage_is_listed_in_setup_cfg() -> None:
    listed = {
        line.strip()
        for line in (ROOT / "setup.cfg").read_text().split("packages =", 1)[1].split("package_dir", 1)[0].splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    present = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sipproxy").rglob("__init__.py")}
    assert present <= listed
