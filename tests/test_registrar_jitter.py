"""``--expires-jitter`` (issue 17): step 7 grants a random expiry within a range, so refreshes spread out."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.python.usage import UsageError

from sipproxy.location import LocationStore
from sipproxy.registrar import Registrar, RegistrarSettings
from sipproxy.tap import Options

try:
    from tests.test_registrar import ALICE, PHONE, SOURCE, START, listed, register
except ImportError:  # pragma: no cover
    from test_registrar import ALICE, PHONE, SOURCE, START, listed, register  # type: ignore[no-redef]


def _settings(jitter: float, **kw: int) -> RegistrarSettings:
    return RegistrarSettings(domains=frozenset({"example.test"}), expires_jitter=jitter, **kw)


def test_granted_expiry_lies_in_expires_times_one_minus_j_to_expires() -> None:
    settings = _settings(0.1)
    assert settings.granted(3600, lambda: 0.0) == 3600
    assert settings.granted(3600, lambda: 0.5) == 3420
    assert settings.granted(3600, lambda: 0.999999) == 3241  # never below 3600 x 0.9 = 3240
    assert {settings.granted(3600, __import__("random").random) >= 3240 for _ in range(1000)} == {True}


def test_granted_expiry_is_never_below_min_expires_and_off_by_default() -> None:
    assert _settings(0.5, min_expires=60).granted(100, lambda: 0.99) == 60
    assert _settings(0.5, min_expires=60).granted(60, lambda: 0.99) == 60
    assert RegistrarSettings(domains=frozenset({"example.test"})).granted(3600, lambda: 0.99) == 3600
    with pytest.raises(ValueError, match="expires_jitter"):
        _settings(1.0)


def test_the_200_and_the_binding_carry_the_randomised_expiry() -> None:
    clock = Clock()
    clock.advance(START)
    store = LocationStore(clock)
    registrar = Registrar(store, clock, _settings(0.1))
    registrar.random = lambda: 0.5
    response = registrar.handle(register(expires=3600), SOURCE)
    assert response.status == 200
    assert listed(response)[PHONE]["expires"] == "3420"
    [binding] = store.lookup(ALICE)
    assert binding.expires_at - START == 3420


@pytest.mark.parametrize(("value", "share"), [("10%", 0.1), ("0.25", 0.25), ("0", 0.0), ("2.5%", 0.025)])
def test_the_option_takes_a_percentage_or_a_share(value: str, share: float) -> None:
    options = Options()
    options.parseOptions(["--expires-jitter", value])
    assert options["expires-jitter"] == pytest.approx(share)


@pytest.mark.parametrize("value", ["100%", "1", "-5%", "lots", "%"])
def test_a_bad_jitter_is_one_line(value: str) -> None:
    with pytest.raises(UsageError, match="--expires-jitter"):
        Options().parseOptions(["--expires-jitter", value])
