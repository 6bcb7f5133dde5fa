"""The optional C accelerator's entry points (``_speedups.c``), each ``None`` where it is not in use.

``parser.py`` fills them in once the message classes exist (the C code
builds objects of those classes).  ``parse_message``, ``parse_name_addr``
and ``parse_uri`` look here on every call, so a test can switch the
accelerator off (``tests/conftest.py``) and run the Python code alone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: ``parse(data)``: the everyday message as ``parser.parse_python`` builds it, else ``None``.
parse: Callable[[bytes], Any] | None = None
#: ``name_addr(text)``: a plain name-addr or addr-spec as ``values.parse_name_addr`` builds it, else ``None``.
name_addr: Callable[[str], Any] | None = None
#: ``sip_uri(text)``: a plain ``sip:`` URI as ``uri.parse_uri`` builds it, else ``None``.
sip_uri: Callable[[str], Any] | None = None
