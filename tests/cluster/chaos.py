"""Faults for the chaos tests (test_chaos.py, bench/bench_chaos.py): the operator killed, a stage
Pod killed, the S3 server stopped, kube-apiserver and etcd restarted (etcd keeps its data
directory, so the cluster's objects survive). Each fault is the real thing done to the real
process; nothing is simulated.

The artifact comparison lives here too: which objects of a run must be byte-identical to an
undisturbed run of the same spec, and which cannot be.
"""

from __future__ import annotations

import re
import time
import urllib.request
from dataclasses import dataclass, field

from kubernetes import client

from kubeharness.cluster import Cluster
from kubeharness.controlplane import _https_ok
from kubeharness.process import Service, wait_for
from kubeharness.s3server import S3Server

STEP_ANNOTATION = "cream.dev/step"


@dataclass
class Tally:
    """What a chaos run did, for its assertions and the benchmark's table."""

    operator_kills: int = 0
    pod_kills: int = 0
    s3_outages: int = 0
    s3_down_seconds: float = 0.0
    apiserver_restarts: int = 0
    etcd_restarts: int = 0
    log: list[str] = field(default_factory=list)

    def note(self, what: str, started: float) -> None:
        self.log.append(f"{time.monotonic() - started:7.1f}s {what}")


def _service(cluster: Cluster, name: str) -> Service:
    return next(s for s in cluster.control_plane.services if s.name == name)


def restart_control_plane(cluster: Cluster, etcd: bool, down: float = 2.0) -> None:
    """Stop kube-apiserver (and etcd), wait `down` seconds, start them again with the same
    flags: the same ports, certificates and etcd data directory."""
    cp = cluster.control_plane
    apiserver = _service(cluster, "kube-apiserver")
    store = _service(cluster, "etcd")
    apiserver.stop()
    if etcd:
        store.stop()
    time.sleep(down)
    if etcd:
        store.start()
        wait_for(lambda: urllib.request.urlopen(f"{cp.etcd_url}/health", timeout=2).status
                 == 200, 60, "etcd /health after its restart", store)
    apiserver.start()
    wait_for(lambda: _https_ok(f"{cp.server}/readyz", cp.pki), 120,
             "kube-apiserver /readyz after its restart", apiserver)


def s3_outage(s3: S3Server, seconds: float) -> None:
    """Stop the S3 server for `seconds`, then start it again on the same port and data."""
    s3.service.stop()
    time.sleep(seconds)
    s3.service.start()
    wait_for(lambda: urllib.request.urlopen(f"{s3.endpoint}/minio/health/ready",
                                            timeout=2).status == 200,
             60, "MinIO ready after its outage", s3.service)


def running_steps(batch: client.BatchV1Api, namespace: str, run: str) -> set[str]:
    """Steps of a run whose Job has a Pod running (or starting) now."""
    jobs = batch.list_namespaced_job(namespace, label_selector=f"cream.dev/run={run}").items
    return {j.metadata.annotations.get(STEP_ANNOTATION, "") for j in jobs if j.status.active}


def kill_stage_pod(core: client.CoreV1Api, namespace: str, run: str, step: str) -> str | None:
    """Delete the running Pod of one step of the run at once (no grace), as a node failure would
    end it; its Job makes another. The Pod's name, or None when none runs yet."""
    pods = core.list_namespaced_pod(namespace, label_selector=f"cream.dev/run={run}").items
    running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
               and (p.metadata.annotations or {}).get(STEP_ANNOTATION) == step]
    if not running:
        return None
    pod = running[0]
    core.delete_namespaced_pod(pod.metadata.name, namespace, grace_period_seconds=0)
    return pod.metadata.name


# --- artifacts ----------------------------------------------------------------------------------

# Objects that differ between two runs of one spec by design, and why:
# - request.json: a stage's request names the run's own artifact root (it holds the run's uid).
# - manifest.json: the stage's manifest names its outputs by URI (the root again) and records the
#   stage's wall time.
# - trainer logs and the like record times.
NOT_DETERMINISTIC = re.compile(r"(^|/)(request\.json|_manifest\.json|manifest\.json)$")


def objects(s3: S3Server, bucket: str, root: str) -> dict[str, bytes]:
    """Every object under a run's artifact root (s3://bucket/prefix), by key relative to it."""
    prefix = root.removeprefix(f"s3://{bucket}/").rstrip("/") + "/"
    s3c = s3.client()
    out: dict[str, bytes] = {}
    for page in s3c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3c.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            out[obj["Key"].removeprefix(prefix)] = body
    return out


def compare(reference: dict[str, bytes], disturbed: dict[str, bytes]) -> tuple[list[str], int]:
    """(mismatches, objects compared byte for byte). A mismatch: a key only one run has, or a
    deterministic object whose bytes differ."""
    mismatches = sorted(f"only in one run: {k}" for k in set(reference) ^ set(disturbed))
    compared = 0
    for key in sorted(set(reference) & set(disturbed)):
        if NOT_DETERMINISTIC.search(key):
            continue
        compared += 1
        if reference[key] != disturbed[key]:
            mismatches.append(f"bytes differ: {key}")
    return mismatches, compared
