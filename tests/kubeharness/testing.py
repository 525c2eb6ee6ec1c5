"""Small helpers for tests against the harness: manifests and waits, on plain dicts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

PY = "python"  # the node agent puts the venv first on PATH


def container(command: list[str], name: str = "main", **extra: Any) -> dict:
    return {"name": name, "image": "kubeharness/local", "command": command, **extra}


def pod_manifest(name: str, command: list[str], restart_policy: str = "Never",
                 **spec: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 2,
                     "containers": [container(command)], **spec}}


def job_manifest(name: str, command: list[str], backoff_limit: int = 0,
                 restart_policy: str = "Never", pod_spec: dict | None = None,
                 **spec: Any) -> dict:
    template_spec = {"restartPolicy": restart_policy, "terminationGracePeriodSeconds": 2,
                     "containers": [container(command)], **(pod_spec or {})}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
            "spec": {"backoffLimit": backoff_limit, "template": {"spec": template_spec},
                     **spec}}


def wait_until(fn: Callable, timeout: float = 60.0, what: str = "condition",
               interval: float = 0.2):
    """Call fn until it returns something truthy; return that, or fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _raw(resp) -> dict:
    return json.loads(resp.data)


def get_pod(api: client.ApiClient, ns: str, name: str) -> dict | None:
    try:
        return _raw(client.CoreV1Api(api).read_namespaced_pod(name, ns, _preload_content=False))
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def get_job(api: client.ApiClient, ns: str, name: str) -> dict:
    return _raw(client.BatchV1Api(api).read_namespaced_job(name, ns, _preload_content=False))


def job_pods(api: client.ApiClient, ns: str, job: str) -> list[dict]:
    resp = client.CoreV1Api(api).list_namespaced_pod(
        ns, label_selector=f"batch.kubernetes.io/job-name={job}", _preload_content=False)
    return _raw(resp)["items"]


def condition(obj: dict, type_: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == type_ and c["status"] == "True":
            return c
    return None


def wait_job_finished(api: client.ApiClient, ns: str, name: str, timeout: float = 120.0) -> dict:
    """Wait for Complete or Failed; return the Job."""

    def finished():
        job = get_job(api, ns, name)
        return job if condition(job, "Complete") or condition(job, "Failed") else None

    return wait_until(finished, timeout, f"Job {ns}/{name} to finish")


def wait_pod_phase(api: client.ApiClient, ns: str, name: str, phases: tuple[str, ...],
                   timeout: float = 60.0) -> dict:
    def in_phase():
        pod = get_pod(api, ns, name)
        return pod if pod and (pod.get("status") or {}).get("phase") in phases else None

    return wait_until(in_phase, timeout, f"Pod {ns}/{name} in {phases}")


def terminated(pod: dict, container: str | None = None) -> dict:
    """state.terminated of a container (the first one by default)."""
    for cs in pod["status"].get("containerStatuses") or []:
        if container is None or cs["name"] == container:
            return cs["state"]["terminated"]
    raise KeyError(container)
