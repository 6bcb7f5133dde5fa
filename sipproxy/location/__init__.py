"""The location service (RFC 3261 §10.3): bindings, their expiry and their persistence."""

from __future__ import annotations

from sipproxy.location.binding import Binding
from sipproxy.location.sqlite import SQLitePersistence
from sipproxy.location.store import BindingEvent, LocationStore

__all__ = ["Binding", "BindingEvent", "LocationStore", "SQLitePersistence"]
