"""The announce loop's rule (hffs/daemon/announcer.py); the loop itself runs in test_dht."""

from __future__ import annotations

from hffs.daemon.announcer import ANNOUNCE_MIN_GAP, SMALL_SWARM, announce_due

PERIOD = 600.0


def test_nobody_to_tell_means_no_round() -> None:
    assert not announce_due(1e6, -1e9, 0, 0, PERIOD)


def test_a_round_before_records_expire() -> None:
    assert announce_due(PERIOD, 0.0, 50, 50, PERIOD)
    assert not announce_due(PERIOD - 1, 0.0, 50, 50, PERIOD)


def test_a_small_swarm_that_grew_is_told_again_but_not_too_often() -> None:
    assert announce_due(ANNOUNCE_MIN_GAP, 0.0, 1, 2, PERIOD)  # the newcomer may be closest
    assert not announce_due(ANNOUNCE_MIN_GAP / 2, 0.0, 1, 2, PERIOD)
    assert not announce_due(ANNOUNCE_MIN_GAP, 0.0, 3, 3, PERIOD)  # nobody new
    assert not announce_due(ANNOUNCE_MIN_GAP, 0.0, SMALL_SWARM, SMALL_SWARM + 5, PERIOD)
