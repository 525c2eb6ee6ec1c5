"""Two operator replicas with leader election on a Lease (cream_operator/leader.py), on the real
control plane: only the leader acts; killed with SIGKILL mid-run, the standby takes over within
the bound the lease settings give, and the run Succeeds with every Job created once."""

from __future__ import annotations

import json
import re
import time
from datetime import datetime

import pytest
import test_operator
from kubernetes import client
from operator_process import OperatorProcess
from test_operator import _apply, _jobs, _tiny, _wait_phase

from cream_operator import pipeline, specfile
from cream_operator.leader import LOST_EXIT_CODE, ElectionConfig
from cream_operator.spec import GROUP

pytestmark = pytest.mark.cluster

# test_operator's fixtures: a namespace enforcing the restricted Pod Security Standard, the CRD,
# a bucket and its Secret, the Job creations watch.
crd, namespace, bucket, s3_secret, creations = (
    test_operator.crd, test_operator.namespace, test_operator.bucket, test_operator.s3_secret,
    test_operator.creations)

LEASE = "cream-operator"
# Short enough for a quick test, long enough that a loaded 2-core machine renews in time.
SETTINGS = {"CREAM_LEASE_NAME": LEASE, "CREAM_LEASE_DURATION_SECONDS": "8",
            "CREAM_LEASE_RENEW_DEADLINE_SECONDS": "6", "CREAM_LEASE_RETRY_PERIOD_SECONDS": "1"}


def _replica(kube_env, namespace, bucket, tmp_path, name: str) -> OperatorProcess:
    log_dir = tmp_path / name
    log_dir.mkdir()
    env = {**kube_env, **SETTINGS, "POD_NAME": name, "POD_NAMESPACE": namespace}
    return OperatorProcess(env, namespace, log_dir, f"s3://{bucket}/runs")


@pytest.fixture
def replicas(crd, kube_env, namespace, bucket, s3_secret, tmp_path):
    made: list[OperatorProcess] = []

    def make(name: str) -> OperatorProcess:
        made.append(_replica(kube_env, namespace, bucket, tmp_path, name))
        return made[-1]

    yield make
    for op in made:
        op.stop()


def _lease(k8s_api, namespace) -> dict:
    lease = client.CoordinationV1Api(k8s_api).read_namespaced_lease(
        LEASE, namespace, _preload_content=False)
    return json.loads(lease.data)["spec"]


def _holder(k8s_api, namespace) -> str | None:
    try:
        return _lease(k8s_api, namespace).get("holderIdentity")
    except client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _stamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


JOB_CREATED = re.compile(r"job created run=\S+ job=(\S+)")


def _created(op: OperatorProcess) -> list[str]:
    return JOB_CREATED.findall(op.log_text())


def test_the_standby_takes_over_from_a_killed_leader_within_the_lease_bound(
        k8s_api, kubectl, namespace, replicas, creations, wait_until):
    settings = ElectionConfig.from_env({**SETTINGS, "POD_NAMESPACE": namespace})
    a = replicas("op-a").start()
    wait_until(lambda: _holder(k8s_api, namespace) == "op-a", 30, "op-a to lead")
    b = replicas("op-b").start()  # its health endpoint answers while it stands by

    # One iteration of the tiny run without evaluation: SFT, sample, score, consistency, DPO.
    doc = _tiny(iterations=1, data={**_tiny()["spec"]["data"],
                                    "prompts": ["builtin://data/prompts-1.jsonl"]},
                evaluation={"tasks": [], "baseline": False})
    doc["metadata"]["name"] = "standby"
    _apply(kubectl, namespace, doc)

    # Mid-run: the sample stage's Job runs, created by the leader; the standby has done nothing.
    def sampling():
        return any(j.status.active and j.metadata.annotations.get(f"{GROUP}/step")
                   == "iter-1/sample" for j in _jobs(k8s_api, namespace))

    wait_until(sampling, 300, "the sample stage to run", interval=0.2)
    assert _created(a) and not _created(b), b.log_text()[-3000:]
    assert "standing by" in b.log_text()
    last_renewal = _stamp(_lease(k8s_api, namespace)["renewTime"])

    a.kill()
    killed = time.monotonic()
    while (holder := _holder(k8s_api, namespace)) != "op-b":
        assert holder == "op-a", holder
        assert time.monotonic() - killed < 60, "the standby never took over"
        last_renewal = max(last_renewal, _stamp(_lease(k8s_api, namespace)["renewTime"]))
        time.sleep(0.05)
    failover = time.monotonic() - killed
    taken = _stamp(_lease(k8s_api, namespace)["acquireTime"])
    print(f"failover {failover:.2f}s with lease {settings.lease_duration:g}s, renew deadline "
          f"{settings.renew_deadline:g}s, retry {settings.retry_period:g}s")
    # Never before the lease expired: the standby waited a full duration after the last renewal
    # it could have seen (both stamps are this machine's clock)...
    assert taken - last_renewal >= settings.lease_duration
    # ...and not much after: the bound that follows from the settings, plus one retry period for
    # the API calls of a loaded machine (each is cut off after one).
    assert failover <= settings.takeover_bound + settings.retry_period, failover

    status = _wait_phase(wait_until, k8s_api, namespace, "standby", {"Succeeded", "Failed"}, b,
                         timeout=900)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    run = specfile.parse(doc)
    steps = pipeline.plan(run.spec, status["artifacts"])
    assert sorted(creations.uids) == sorted(_created(a) + _created(b))
    assert len(creations.uids) == len(steps)
    assert all(len(uids) == 1 for uids in creations.uids.values()), dict(creations.uids)
    assert _created(b), "the new leader created the rest of the run's Jobs"


def test_a_leader_whose_lease_is_taken_exits_at_once(
        k8s_api, namespace, replicas, wait_until):
    """A leader that finds another holder (say it was paused past the lease, and a standby took
    over) must not act once more: it exits, and its Pod restarts as a standby."""
    a = replicas("op-a").start()
    wait_until(lambda: _holder(k8s_api, namespace) == "op-a", 30, "op-a to lead")
    leases = client.CoordinationV1Api(k8s_api)
    lease = leases.read_namespaced_lease(LEASE, namespace)
    lease.spec.holder_identity = "someone-else"
    leases.replace_namespaced_lease(LEASE, namespace, lease)
    taken = time.monotonic()
    wait_until(lambda: a.proc.poll() is not None, 10, "the old leader to exit")
    assert time.monotonic() - taken <= 2 * float(SETTINGS["CREAM_LEASE_RETRY_PERIOD_SECONDS"])
    assert a.proc.returncode == LOST_EXIT_CODE
    assert "leader lost reason=Lease held by someone-else" in a.log_text()


def test_a_leader_stopped_cleanly_hands_the_lease_over_at_once(
        k8s_api, namespace, replicas, wait_until):
    """An upgrade or a drain stops the leader with SIGTERM: it releases the Lease, so the standby
    takes over at its next look instead of waiting for the lease to expire."""
    a = replicas("op-a").start()
    wait_until(lambda: _holder(k8s_api, namespace) == "op-a", 30, "op-a to lead")
    replicas("op-b").start()
    a.stop()
    assert a.proc.returncode == 0, a.log_text()[-3000:]
    stopped = time.monotonic()
    wait_until(lambda: _holder(k8s_api, namespace) == "op-b", 30, "op-b to lead")
    retry = float(SETTINGS["CREAM_LEASE_RETRY_PERIOD_SECONDS"])
    # One look of the standby (and its write), far less than the 8 s lease.
    assert time.monotonic() - stopped <= 2 * retry + 0.5
    assert "leader released" in a.log_text()
