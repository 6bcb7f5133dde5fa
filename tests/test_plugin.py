"""The twistd plugin is found, and ships in the wheel (the daphne PR 507 lesson).

The C accelerator is optional (setup.py): where no C compiler is, the wheel
has none and the server builds from it all the same, on the Python parser.
"""

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

try:
    from tests.messages import make_request
except ImportError:  # pragma: no cover
    from messages import make_request  # type: ignore[no-redef]

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
    if c_compiler_available():
        assert built, "a C compiler is here, yet the wheel has no sipproxy/message/_speedups*.so"
    unpacked = tmp_path / "unpacked"
    zipfile.ZipFile(wheel).extractall(unpacked)
    env = {k: v for k, v in os.environ.items() if k != "SIPPROXY_NO_EXTENSIONS"}
    env["PYTHONPATH"] = str(unpacked)
    script = FROM_THE_WHEEL.replace("REQUEST_BYTES", repr(make_request("OPTIONS", "sip:a@b")))
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
    )
    where, plugin, kind, method, service, parser_line = run.stdout.splitlines()
    # Either way: the plugin and the package load from the wheel, a request parses, the server builds.
    assert Path(where).is_relative_to(unpacked) and Path(plugin).is_relative_to(unpacked)
    assert method == "OPTIONS" and service == "SipProxyService"
    # The parser that runs is the one the wheel carries, and the start-up log says which.
    assert kind == ("C" if built else "Python")
    assert parser_line.startswith("SIP parser") and ("pure Python" in parser_line) == (not built)


#: Run from the unpacked wheel alone: what ``twistd -n sipproxy`` does up to binding its ports.
FROM_THE_WHEEL = """
import sys

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins

import sipproxy.message as m
from sipproxy.message import _accel

maker = next(p for p in getPlugins(IServiceMaker) if p.tapname == "sipproxy")
options = maker.options()
options.parseOptions(["--db", ":memory:", "--sip-interface", "127.0.0.1", "--web", "tcp:0:interface=127.0.0.1"])
formats = []
globalLogPublisher.addObserver(lambda event: formats.append(event.get("log_format") or ""))
from sipproxy.service import build_service  # makeService without listen(): no port is bound
service = build_service(options, reactor)
print(m.__file__)
print(sys.modules["twisted.plugins.sipproxy_plugin"].__file__)
print("C" if _accel.parse else "Python")
print(m.parse_message(REQUEST_BYTES).method)
print(type(service).__name__)
print(next(f for f in formats if f.startswith("SIP parser")))
service.core.store.close()
"""


def test_every_subpackage_is_listed_in_setup_cfg() -> None:
    listed = {
        line.strip()
        for line in (ROOT / "setup.cfg").read_text().split("packages =", 1)[1].split("package_dir", 1)[0].splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    present = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sipproxy").rglob("__init__.py")}
    assert present <= listed
