# -*- test-case-name: tests.test_transport_stream -*-
"""Which connections carry a registered binding: the flows the connection limits keep (RFC 5626 §3).

A phone registered over TCP is reached through the connection its REGISTER
came on (RFC 3261 §18.2.2, RFC 5626 §5.3); closing that connection to let a
stranger in would cut the phone off.  :class:`RegisteredFlows` follows the
location service's changes, read by shape (the transport imports nothing
from ``sipproxy.location``): wiring subscribes :meth:`RegisteredFlows.changed`
and hands the object to the transport layer as its ``holds_flow``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from sipproxy.net import Target, is_reliable
from sipproxy.transport.address import normalize_host

__all__ = ["RegisteredFlows", "flow_state"]

Flow = tuple[str, str, int]


class _Binding(Protocol):
    @property
    def aor(self) -> str: ...
    @property
    def contact(self) -> str: ...
    @property
    def transport(self) -> str: ...
    @property
    def source_host(self) -> str: ...
    @property
    def source_port(self) -> int: ...


class _Event(Protocol):
    """A ``sipproxy.location.BindingEvent``, by shape."""

    @property
    def kind(self) -> str: ...
    @property
    def binding(self) -> _Binding: ...


def flow_state(has_flow: Callable[[Target], bool]) -> Callable[[_Binding], str | None]:
    """A binding's flow as the page shows it: ``"open"`` while its connection is, else ``"lost"``; UDP: ``None``.

    ``has_flow`` is the transport's :meth:`~sipproxy.transport.TransportLayer.has_flow`.
    A flow-bound binding shows ``"lost"`` only with ``--keep-flow-bindings``
    (otherwise it goes with its connection); other TCP/TLS bindings may stay
    "lost", reachable at their Contact.
    """

    def state(binding: _Binding) -> str | None:
        if not is_reliable(binding.transport) or not binding.source_host:
            return None
        flow = Target(binding.transport.upper(), normalize_host(binding.source_host), binding.source_port)
        return "open" if has_flow(flow) else "lost"

    return state


class RegisteredFlows:
    """``flows(transport, host, port)``: does a live binding come from that connection?

    :meth:`bindings_on` names them: when the connection closes, wiring
    hands them to the registrar, which drops the flow-bound ones (RFC 5626
    §5.3: their flow is gone).
    """

    def __init__(self) -> None:
        self._where: dict[tuple[str, str], Flow] = {}
        self._on: dict[Flow, set[tuple[str, str]]] = {}

    def __call__(self, transport: str, host: str, port: int) -> bool:
        return (transport.upper(), host, port) in self._on

    def bindings_on(self, transport: str, host: str, port: int) -> list[tuple[str, str]]:
        """``(aor, contact)`` of every live binding whose REGISTER came on that connection."""
        return sorted(self._on.get((transport.upper(), normalize_host(host), port), ()))

    def changed(self, event: _Event) -> None:
        """One change of the location service (a ``BindingEvent``)."""
        binding = event.binding
        key = (binding.aor, binding.contact)
        old = self._where.pop(key, None)
        if old is not None:
            keys = self._on[old]
            keys.discard(key)
            if not keys:
                del self._on[old]
        if event.kind in ("added", "refreshed") and is_reliable(binding.transport) and binding.source_host:
            flow = (binding.transport.upper(), normalize_host(binding.source_host), binding.source_port)
            self._where[key] = flow
            self._on.setdefault(flow, set()).add(key)
