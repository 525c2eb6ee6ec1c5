"""Chaos, short version: during one small CreamRun the operator is killed at seeded random
moments, a stage Pod is killed, the S3 server is stopped for longer than a stage's S3 retries
last, and kube-apiserver and etcd are restarted (etcd keeps its data). The run must end
Succeeded, each Job name created once, and its artifacts byte-identical to those of an
undisturbed run of the same spec (chaos.NOT_DETERMINISTIC lists what cannot be, and why).

CREAM_CHAOS_SEED picks another schedule; the long version is bench/bench_chaos.py.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import test_operator
from chaos import (
    NOT_DETERMINISTIC,
    Tally,
    compare,
    kill_stage_pod,
    objects,
    restart_control_plane,
    running_steps,
)
from chaos import s3_outage as stop_s3
from kubernetes import client
from test_operator import _apply, _status, _tiny, _wait_phase

from cream_operator import pipeline, specfile

pytestmark = pytest.mark.cluster

crd, namespace, bucket, s3_secret, operator, creations = (
    test_operator.crd, test_operator.namespace, test_operator.bucket, test_operator.s3_secret,
    test_operator.operator, test_operator.creations)

SEED = int(os.environ.get("CREAM_CHAOS_SEED", "1"))
REPORT = os.environ.get("CREAM_CHAOS_REPORT")  # a JSON file of the counts, for the bench
# boto3's standard retries (artifacts.py: 5 attempts, backoff capped at 20 s) give up within
# about 15 s; 40 s down makes a stage that touches S3 fail its attempt and the Job retry it.
S3_DOWN = 40.0


def small_run(name: str) -> dict:
    """One iteration of the tiny run with one evaluation task: SFT, evaluate (the SFT model),
    sample, score twice, consistency, DPO, evaluate."""
    tiny = _tiny()["spec"]
    doc = _tiny(iterations=1, data={**tiny["data"], "prompts": [tiny["data"]["prompts"][0]]},
                evaluation={**tiny["evaluation"], "tasks": tiny["evaluation"]["tasks"][:1]})
    doc["metadata"]["name"] = name
    return doc


def test_a_run_survives_operator_kills_a_pod_kill_an_s3_outage_and_control_plane_restarts(
        k8s_api, kubectl, namespace, operator, creations, s3, bucket, cluster, wait_until):
    rng = random.Random(SEED)
    batch, core = client.BatchV1Api(k8s_api), client.CoreV1Api(k8s_api)

    # The reference: the same spec, undisturbed.
    _apply(kubectl, namespace, small_run("calm"))
    calm = _wait_phase(wait_until, k8s_api, namespace, "calm", {"Succeeded", "Failed"}, operator,
                       timeout=900)
    assert calm["phase"] == "Succeeded", json.dumps(calm, indent=1)

    doc = small_run("chaos")
    _apply(kubectl, namespace, doc)
    tally, started = Tally(), time.monotonic()
    # Faults that need a stage at work, each done once, when one of its stages runs.
    faults = {"pod": {"iter-1/sample"}, "s3": {"iter-1/score-m0", "iter-1/score-m1"},
              "control-plane": {"iter-1/consistency", "iter-1/dpo", "iter-1/evaluate"}}
    next_kill = started + rng.uniform(2, 10)

    def kill_operator(why: str) -> None:
        operator.kill()
        time.sleep(rng.uniform(0, 2))
        operator.start()
        tally.operator_kills += 1
        tally.note(f"operator killed ({why})", started)

    while True:
        phase = _status(k8s_api, namespace, "chaos").get("phase")
        if phase in ("Succeeded", "Failed"):
            break
        assert time.monotonic() - started < 1200, "the disturbed run did not end in 20 min"
        running = running_steps(batch, namespace, "chaos")
        for fault, steps in list(faults.items()):
            if not running & steps:
                continue
            step = sorted(running & steps)[0]
            if fault == "pod":
                pod = kill_stage_pod(core, namespace, "chaos", step)
                if pod is None:
                    continue  # its Pod is not running yet: look again
                tally.pod_kills += 1
                tally.note(f"stage Pod {pod} killed during {step}", started)
            elif fault == "s3":
                tally.note(f"S3 stopped for {S3_DOWN:g}s during {step}", started)
                stop_s3(s3, S3_DOWN)
                tally.s3_outages += 1
                tally.s3_down_seconds += S3_DOWN
            else:
                restart_control_plane(cluster, etcd=True)
                tally.apiserver_restarts += 1
                tally.etcd_restarts += 1
                tally.note(f"kube-apiserver and etcd restarted during {step}", started)
            del faults[fault]
        if time.monotonic() >= next_kill:
            kill_operator("random moment")
            next_kill = time.monotonic() + rng.uniform(3, 15)
        time.sleep(0.2)
    print("\n".join(tally.log))

    status = _status(k8s_api, namespace, "chaos")
    steps = pipeline.plan(specfile.parse(doc).spec, status["artifacts"])
    chaos_jobs = {n: u for n, u in creations.uids.items() if n.startswith("chaos-")}
    reference = objects(s3, bucket, calm["artifacts"])
    disturbed = objects(s3, bucket, status["artifacts"])
    mismatches, compared = compare(reference, disturbed)
    print(f"{compared} objects byte-identical of {len(disturbed)}; seed {SEED}; not compared: "
          f"{sorted(k for k in disturbed if NOT_DETERMINISTIC.search(k))}")
    if REPORT:  # bench/bench_chaos.py sums these
        Path(REPORT).write_text(json.dumps({
            "seed": SEED, "phase": status.get("phase"), **asdict(tally), "jobs": len(chaos_jobs),
            "duplicates": sum(len(u) - 1 for u in chaos_jobs.values()),
            "mismatches": len(mismatches), "compared": compared}, indent=1))

    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert not faults, f"faults never done (their stage was never seen running): {faults}"
    assert tally.operator_kills >= 3 and tally.pod_kills == 1, tally
    # Each of the run's Jobs was created once.
    assert len(chaos_jobs) == len(steps), sorted(chaos_jobs)
    assert all(len(uids) == 1 for uids in chaos_jobs.values()), chaos_jobs
    # The artifacts are those of the undisturbed run.
    assert not mismatches, mismatches
    assert compared >= len(steps)  # at least one deterministic output per stage
