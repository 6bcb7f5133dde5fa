"""The location service (RFC 3261 §10.3): bindings, their expiry and their persistence."""

from __future__ import annotations

from sipproxy.location.binding import Binding
from sipproxy.location.sqlite import SQLitePersistence
from sipproxy.location.interface import BindingEvent, EventKind, LocationService
from sipproxy.location.store import LocationStore

__all__ = ["Binding", "BindingEvent", "EventKind", "LocationService", "LocationStore", "SQLitePersistence"]
