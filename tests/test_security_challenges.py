"""The order of digest challenges per phone (RFC 8760 §2.3, §2.4), as ``sipproxy.security.challenges`` decides it."""

from __future__ import annotations

from sipproxy.security.challenges import ChallengePolicy, Phone, Unanswered

BOTH = ("SHA-256", "MD5")
ALICE = Phone("192.0.2.7", 5060, "alice")


def policy(algorithms: tuple[str, ...] = BOTH, **kw: object) -> ChallengePolicy:
    return ChallengePolicy(algorithms, 300.0, **kw)  # type: ignore[arg-type]


def test_a_phone_never_seen_gets_md5_alone() -> None:
    """Clients that read only the first challenge (sipsak, sipp) and baresip 1.0 (which fails on any
    SHA-256 challenge) register at once."""
    assert policy().offer(ALICE, 0.0) == ("MD5",)
    assert policy().offer(Phone("192.0.2.8", 5060, "nobody"), 0.0) == ("MD5",)  # whether the user exists or not
    assert policy().offer(ALICE, 0.0, probe=False) == ("MD5",)


def test_a_phone_that_answered_md5_is_probed_with_sha256_first_at_its_next_register() -> None:
    """A §2.4 client (topmost supported, like pjsua2) moves to SHA-256 at its next REGISTER challenge."""
    p = policy()
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "MD5", 1.0, authenticated=True)
    assert p.offer(ALICE, 5.0, probe=False) == ("MD5",)  # a 407 (a call) never probes
    p.answered(ALICE, "MD5", 6.0, authenticated=True)
    assert p.offer(ALICE, 10.0) == ("SHA-256", "MD5")  # the probe
    p.answered(ALICE, "SHA-256", 11.0, authenticated=True)
    assert p.offer(ALICE, 20.0) == ("SHA-256", "MD5")
    assert p.offer(ALICE, 30.0, probe=False) == ("SHA-256", "MD5")  # calls too
    assert p.offer(ALICE, 4000.0) == ("SHA-256", "MD5")


def test_a_phone_that_takes_md5_over_sha256_is_probed_once() -> None:
    p = policy()
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "MD5", 1.0, authenticated=True)
    assert p.offer(ALICE, 10.0) == ("SHA-256", "MD5")  # the probe
    p.answered(ALICE, "MD5", 11.0, authenticated=True)  # it took MD5 although SHA-256 was on top
    assert p.offer(ALICE, 20.0) == ("MD5", "SHA-256")
    assert p.offer(ALICE, 30.0) == ("MD5", "SHA-256")  # no second probe


def test_a_failed_probe_falls_back_to_md5_alone() -> None:
    """baresip 1.0 fails on any SHA-256 challenge and retries without credentials 30-60 s later."""
    p = policy()
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "MD5", 1.0, authenticated=True)
    assert p.offer(ALICE, 10.0) == ("SHA-256", "MD5")
    assert p.came_back(ALICE, 70.0) == Unanswered(("SHA-256", "MD5"), 1, ("MD5",))
    assert p.offer(ALICE, 70.0) == ("MD5",)
    p.answered(ALICE, "MD5", 71.0, authenticated=True)
    assert p.offer(ALICE, 3600.0) == ("MD5",)  # remembered: its refreshes get MD5 alone too


def test_coming_back_is_news_only_while_a_challenge_is_pending() -> None:
    p = policy()
    assert p.came_back(ALICE, 0.0) is None  # never challenged
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "MD5", 1.0, authenticated=False)  # a wrong password is an answer too
    assert p.came_back(ALICE, 2.0) is None
    p.offer(ALICE, 10.0)
    assert p.came_back(ALICE, 311.0) is None  # the challenge's nonce has expired meanwhile: a new start


def test_a_phone_that_never_answers_is_reported_once_after_the_limit() -> None:
    p = policy(unanswered_limit=3)
    notes = []
    for n in range(6):
        p.offer(ALICE, n * 10.0)
        notes.append(p.came_back(ALICE, n * 10.0 + 5))
    assert notes[0:2] == [None, None]
    assert notes[2] == Unanswered(("MD5",), 3, ("MD5",))  # the third in a row: said once
    assert notes[3:] == [None, None, None]


def test_one_configured_algorithm_is_all_there_is() -> None:
    for only in (("SHA-256",), ("MD5",)):
        p = policy(only)
        assert p.offer(ALICE, 0.0) == only
        assert p.came_back(ALICE, 1.0) is None  # nothing else to offer: no news until the limit
        p.answered(ALICE, only[0], 2.0, authenticated=True)
        assert p.offer(ALICE, 3.0) == only


def test_memory_is_bounded_and_forgets_idle_phones() -> None:
    p = ChallengePolicy(BOTH, 300.0, max_phones=10, forget_after=3600.0)
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "SHA-256", 1.0, authenticated=True)
    assert p.offer(ALICE, 2.0) == ("SHA-256", "MD5")
    assert p.offer(ALICE, 3700.0) == ("MD5",)  # not seen for over an hour: a stranger again
    for n in range(100):
        p.offer(Phone(f"198.51.100.{n}", 5060, "x"), 4000.0)
    assert len(p) == 10


def test_a_new_port_is_a_new_phone() -> None:
    """A one-shot tool (sipsak, sipp) runs from a new port each time and finds MD5 alone again."""
    p = policy()
    p.offer(ALICE, 0.0)
    p.answered(ALICE, "MD5", 1.0, authenticated=True)
    assert p.offer(ALICE._replace(port=40001), 10.0) == ("MD5",)
