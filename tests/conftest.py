"""Fixtures shared by the in-process suites."""

from __future__ import annotations

import pytest

from sipproxy.message import _accel


@pytest.fixture(params=["accelerated", "python"])
def both_parsers(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the C accelerator (``_speedups.c``) in front, then with the Python parser alone.

    The accelerator takes every everyday message (and name-addr, and sip: URI), so
    without the second run the Python short paths -- what a machine without a C
    compiler runs -- would go untested.
    """
    if request.param == "python":
        for name in ("parse", "name_addr", "sip_uri"):
            monkeypatch.setattr(_accel, name, None)
    elif _accel.parse is None:
        pytest.skip("the C accelerator is not in use here (not built, or SIPPROXY_NO_EXTENSIONS is set)")
    return request.param
