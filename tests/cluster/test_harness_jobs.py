"""The real Job controller drives Pods that the node agent runs as local processes."""

from __future__ import annotations

import os
import sys

import pytest
from kubernetes import client

from kubeharness.testing import (
    PY,
    condition,
    get_pod,
    job_manifest,
    job_pods,
    terminated,
    wait_job_finished,
    wait_until,
)

pytestmark = pytest.mark.cluster


def _create(k8s_api, ns: str, manifest: dict) -> None:
    client.BatchV1Api(k8s_api).create_namespaced_job(ns, manifest)


def test_job_runs_python_and_completes(k8s_api, namespace, node_agent):
    code = "import sys; print('hello from', sys.executable, flush=True)"
    _create(k8s_api, namespace, job_manifest("hello", [PY, "-c", code]))

    job = wait_job_finished(k8s_api, namespace, "hello")
    assert condition(job, "Complete"), job["status"]
    assert job["status"]["succeeded"] == 1
    [pod] = job_pods(k8s_api, namespace, "hello")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == node_agent.name
    state = terminated(pod)
    assert state["exitCode"] == 0 and state["reason"] == "Completed"
    # `python` in a Pod is the project's venv python, the one running these tests
    assert node_agent.log(pod).read_text().strip() == f"hello from {sys.executable}"


def test_failing_job_fails_after_backoff_limit(k8s_api, namespace):
    _create(k8s_api, namespace, job_manifest(
        "fails", [PY, "-c", "import sys; sys.exit(3)"], backoff_limit=2))

    job = wait_job_finished(k8s_api, namespace, "fails", timeout=180)
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "BackoffLimitExceeded", job["status"]
    pods = job_pods(k8s_api, namespace, "fails")
    assert len(pods) == 2 + 1
    assert {terminated(p)["exitCode"] for p in pods} == {3}
    assert {p["status"]["phase"] for p in pods} == {"Failed"}


def test_pod_failure_policy_fails_job_on_exit_code(k8s_api, namespace):
    manifest = job_manifest("policy", [PY, "-c", "import sys; sys.exit(42)"], backoff_limit=5,
                            podFailurePolicy={"rules": [{
                                "action": "FailJob",
                                "onExitCodes": {"operator": "In", "values": [42]}}]})
    _create(k8s_api, namespace, manifest)

    job = wait_job_finished(k8s_api, namespace, "policy")
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "PodFailurePolicy", job["status"]
    assert len(job_pods(k8s_api, namespace, "policy")) == 1


def test_on_failure_restarts_the_container_in_place(k8s_api, namespace):
    # fails once, then succeeds: the emptyDir survives the restart, as in a real Pod
    code = ("import os, sys; m = '/scratch/tried'\n"
            "if not os.path.exists(m):\n    open(m, 'w').close(); sys.exit(1)\n")
    manifest = job_manifest("retry", [PY, "-c", code], backoff_limit=3,
                            restart_policy="OnFailure", pod_spec={
                                "volumes": [{"name": "scratch", "emptyDir": {}}]})
    manifest["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "scratch", "mountPath": "/scratch"}]
    _create(k8s_api, namespace, manifest)

    job = wait_job_finished(k8s_api, namespace, "retry")
    assert condition(job, "Complete"), job["status"]
    [pod] = job_pods(k8s_api, namespace, "retry")
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert status["state"]["terminated"]["exitCode"] == 0


def test_indexed_job_gets_completion_index(k8s_api, namespace):
    code = ("import os; open('/dev/termination-log', 'w')"
            ".write(os.environ['JOB_COMPLETION_INDEX'])")
    _create(k8s_api, namespace, job_manifest(
        "indexed", [PY, "-c", code], completions=3, parallelism=3, completionMode="Indexed"))

    job = wait_job_finished(k8s_api, namespace, "indexed")
    assert condition(job, "Complete"), job["status"]
    pods = job_pods(k8s_api, namespace, "indexed")
    assert sorted(terminated(p)["message"] for p in pods) == ["0", "1", "2"]


def test_job_active_deadline_kills_its_pod(k8s_api, namespace, node_agent):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    _create(k8s_api, namespace, job_manifest(
        "deadline", [PY, "-c", code], activeDeadlineSeconds=4))

    def running_pid():
        pods = job_pods(k8s_api, namespace, "deadline")
        if pods and node_agent.log(pods[0]).exists():
            text = node_agent.log(pods[0]).read_text().strip()
            return int(text) if text else None
        return None

    pid = wait_until(running_pid, 60, "the deadline Job's process")
    job = wait_job_finished(k8s_api, namespace, "deadline")
    failed = condition(job, "Failed")
    assert failed and failed["reason"] == "DeadlineExceeded", job["status"]
    wait_until(lambda: not _alive(pid), 30, f"pid {pid} to exit")


def test_deleting_a_job_garbage_collects_its_pods(k8s_api, namespace, node_agent):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    _create(k8s_api, namespace, job_manifest("gc", [PY, "-c", code], parallelism=2,
                                             completions=2))

    def two_pids():
        pods = job_pods(k8s_api, namespace, "gc")
        logs = [node_agent.log(p) for p in pods]
        if len(pods) == 2 and all(log.exists() and log.read_text().strip() for log in logs):
            return pods, [int(log.read_text()) for log in logs]
        return None

    pods, pids = wait_until(two_pids, 60, "two running Pods")
    assert all(_alive(pid) for pid in pids)
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Job" for p in pods)

    client.BatchV1Api(k8s_api).delete_namespaced_job(
        "gc", namespace, propagation_policy="Background")

    wait_until(lambda: not job_pods(k8s_api, namespace, "gc"), 60, "the garbage collector")
    wait_until(lambda: not any(_alive(p) for p in pids), 30, "the Pods' processes to exit")
    assert get_pod(k8s_api, namespace, pods[0]["metadata"]["name"]) is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
