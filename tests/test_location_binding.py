"""Tests for sipproxy.location.binding: the Binding value."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

try:
    from tests.location_helpers import make_binding
except ImportError:  # pragma: no cover
    from location_helpers import make_binding  # type: ignore[no-redef]


class TestBinding:
    @pytest.mark.parametrize("q", [-0.1, 1.01, float("nan")])
    def test_q_out_of_range_is_rejected(self, q: float) -> None:
        with pytest.raises(ValueError, match="q"):
            make_binding(q=q)

    @pytest.mark.parametrize("q", [0.0, 0.5, 1.0])
    def test_q_in_range_is_accepted(self, q: float) -> None:
        assert make_binding(q=q).q == q

    @pytest.mark.parametrize(
        "fields",
        [
            {"aor": ""},
            {"contact": ""},
            {"cseq": -1},
            {"cseq": 2**31},
            {"expires_at": float("inf")},
            {"transport": "udp"},
            {"source_port": 65536},
            {"reg_id": 0},
        ],
    )
    def test_impossible_values_are_rejected(self, fields: dict[str, Any]) -> None:
        with pytest.raises(ValueError):
            dataclasses.replace(make_binding(), **fields)

    def test_is_frozen_and_path_becomes_a_tuple(self) -> None:
        binding = make_binding(path=["<sip:edge.example.test;lr>"])
        assert binding.path == ("<sip:edge.example.test;lr>",)
        with pytest.raises(dataclasses.FrozenInstanceError):
            binding.q = 0.5  # type: ignore[misc]

    def test_expires_in_rounds_up_while_live(self) -> None:
        binding = make_binding(expires_at=1000.1 + 3600)
        assert binding.expires_in(1000.1) == 3600
        assert binding.expires_in(1000.6) == 3600
        assert binding.expires_in(1001.2) == 3599
        assert binding.expires_in(4600.0) == 1
        assert binding.expires_in(4600.1) == 0
        assert binding.expires_in(5000.0) == 0

    def test_source(self) -> None:
        assert make_binding(source_host="192.0.2.7", source_port=5062).source() == "UDP 192.0.2.7:5062"
        v6 = make_binding(transport="TCP", source_host="2001:db8::1", source_port=5060)
        assert v6.source() == "TCP [2001:db8::1]:5060"
        assert make_binding(transport="TLS").source() == "TLS"
