"""sipproxy.errors: one refusal type carrying the response it implies."""

from __future__ import annotations

import pytest

from sipproxy.errors import SipError


def test_a_refusal_carries_status_reason_and_headers() -> None:
    error = SipError(423, None, [("Min-Expires", "60")])
    assert (error.status, error.reason, error.headers) == (423, None, (("Min-Expires", "60"),))


@pytest.mark.parametrize("status", [100, 200, 299, 700])
def test_only_final_non_2xx_statuses_are_refusals(status: int) -> None:
    with pytest.raises(ValueError):
        SipError(status)
