"""Leader election's decisions (cream_operator.leader): who may write the Lease, when, and what."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cream_operator.leader import (
    ElectionConfig,
    LeaseRecord,
    Observation,
    claimed,
    may_take,
    observe,
    record_of,
    released,
    spec_of,
)

NOW = datetime(2026, 12, 5, 13, 0, 0, 123456, tzinfo=UTC)
HELD = LeaseRecord(holder="op-a", duration=15, acquire_time="t0", renew_time="t1", transitions=2)


def test_a_missing_or_free_lease_may_be_taken():
    assert may_take(None, "op-b", now=0)
    assert may_take(Observation(released(HELD), seen_at=100), "op-b", now=100)


def test_a_standby_waits_the_full_duration_after_the_last_change_it_saw():
    seen = Observation(HELD, seen_at=100.0)
    assert not may_take(seen, "op-b", now=100.0)
    assert not may_take(seen, "op-b", now=114.9)
    assert may_take(seen, "op-b", now=115.0)


def test_a_renewal_restarts_the_standbys_clock_and_an_unchanged_record_does_not():
    seen = observe(None, HELD, now=100.0)
    assert observe(seen, HELD, now=110.0) is seen  # the same record: still 100
    renewed = LeaseRecord(**{**HELD.__dict__, "renew_time": "t2"})
    later = observe(seen, renewed, now=110.0)
    assert later.seen_at == 110.0
    assert not may_take(later, "op-b", now=120.0)
    assert may_take(later, "op-b", now=125.0)


def test_expiry_uses_the_duration_written_in_the_lease_not_the_readers_setting():
    short = LeaseRecord(holder="op-a", duration=4, renew_time="t1")
    assert may_take(Observation(short, seen_at=0.0), "op-b", now=4.0)


def test_the_holder_may_always_renew():
    assert may_take(Observation(HELD, seen_at=100.0), "op-a", now=100.0)


def test_renewing_keeps_acquire_time_and_transitions():
    mine = claimed(HELD, "op-a", NOW, 15)
    assert (mine.holder, mine.acquire_time, mine.transitions) == ("op-a", "t0", 2)
    assert mine.renew_time == "2026-12-05T13:00:00.123456Z"


def test_taking_over_counts_a_transition_and_restarts_acquire_time():
    mine = claimed(HELD, "op-b", NOW, 10)
    assert mine == LeaseRecord(holder="op-b", duration=10, acquire_time=mine.renew_time,
                               renew_time="2026-12-05T13:00:00.123456Z", transitions=3)
    assert claimed(None, "op-b", NOW, 10).transitions == 0  # the first holder ever


def test_the_record_round_trips_through_the_lease_spec():
    assert record_of(spec_of(HELD)) == HELD
    assert spec_of(released(HELD))["holderIdentity"] is None
    assert record_of(None) == LeaseRecord()


ENV = {"CREAM_LEASE_NAME": "cream", "POD_NAMESPACE": "ops", "POD_NAME": "cream-7d9-x2"}


def test_no_lease_name_means_no_election():
    assert ElectionConfig.from_env({}) is None
    assert ElectionConfig.from_env({"CREAM_LEASE_NAME": " "}) is None


def test_config_from_the_charts_env():
    config = ElectionConfig.from_env({**ENV, "CREAM_LEASE_DURATION_SECONDS": "6",
                                      "CREAM_LEASE_RENEW_DEADLINE_SECONDS": "4",
                                      "CREAM_LEASE_RETRY_PERIOD_SECONDS": "1"})
    assert config == ElectionConfig("cream", "ops", "cream-7d9-x2", 6, 4, 1)
    assert config.takeover_bound == 8
    defaults = ElectionConfig.from_env(ENV)
    assert (defaults.lease_duration, defaults.renew_deadline, defaults.retry_period) == \
        (15, 10, 2)


def test_without_a_pod_name_identities_still_differ():
    env = {"CREAM_LEASE_NAME": "cream", "CREAM_LEASE_NAMESPACE": "ops"}
    assert ElectionConfig.from_env(env).identity != ElectionConfig.from_env(env).identity


@pytest.mark.parametrize(("env", "says"), [
    ({"CREAM_LEASE_NAME": "cream"}, "POD_NAMESPACE"),
    ({**ENV, "CREAM_LEASE_DURATION_SECONDS": "soon"}, "CREAM_LEASE_DURATION_SECONDS='soon'"),
    ({**ENV, "CREAM_LEASE_RETRY_PERIOD_SECONDS": "0"}, "CREAM_LEASE_RETRY_PERIOD_SECONDS='0'"),
    # A leader must give up before a standby may take over.
    ({**ENV, "CREAM_LEASE_RENEW_DEADLINE_SECONDS": "15"}, "< CREAM_LEASE_DURATION_SECONDS"),
    ({**ENV, "CREAM_LEASE_RETRY_PERIOD_SECONDS": "10"}, "CREAM_LEASE_RETRY_PERIOD_SECONDS <"),
])
def test_bad_settings_are_refused_naming_the_variable(env, says):
    with pytest.raises(ValueError) as refused:
        ElectionConfig.from_env(env)
    assert says in str(refused.value)
