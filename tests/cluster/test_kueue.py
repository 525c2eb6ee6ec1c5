"""The operator's stage Jobs admitted by a real Kueue (kubeharness.kueue): two CreamRuns queued at
once on a LocalQueue whose ClusterQueue has one GPU of quota. Both finish; no two GPU stages ever
hold quota at the same moment; a stage held back shows in its run's status and events as waiting
for admission, not as running."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client, watch
from operator_process import OperatorProcess

from cream_operator.spec import GROUP, PLURAL, VERSION
from kubeharness import kueue as kq

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
RUN_TIMEOUT = 1200  # 12 stages on 2 CPU cores, 10 of them one after another for the GPU quota
GPU = "nvidia.com/gpu"
RUNS = ("queued-a", "queued-b")


def _spec(queue: str) -> dict:
    """tiny.yaml cut to one iteration on two prompts, every model stage asking for one GPU."""
    doc = yaml.safe_load(TINY.read_text())
    spec = doc["spec"]
    spec.update(iterations=1)
    spec["data"].update(prompts=["builtin://data/prompts-1.jsonl"], maxPrompts=2)
    spec["sampling"].update(responsesPerPrompt=3, maxTokens=8)
    spec["sft"].update(epochs=1)
    spec["evaluation"].update(tasks=[], baseline=False)
    gpu_stage = {"gpus": 1, "cpu": "500m", "memory": "1Gi"}
    spec["resources"] = {s: dict(gpu_stage) for s in ("sft", "sample", "score", "dpo", "evaluate")}
    spec["resources"]["consistency"] = {"gpus": 0, "cpu": "500m", "memory": "1Gi"}
    spec["scheduling"] = {"queueName": queue}
    return spec


@pytest.fixture
def queue(k8s_api, kueue, namespace, request):
    """A ResourceFlavor, a ClusterQueue with 1 GPU (and ample CPU and memory) and a LocalQueue
    "gpu" in the test's namespace, which Kueue manages."""
    custom = client.CustomObjectsApi(k8s_api)
    kueue.manage(k8s_api, namespace)
    flavor, cq = f"{namespace}-flavor", f"{namespace}-cq"
    custom.create_cluster_custom_object(kq.GROUP, kq.VERSION, "resourceflavors", {
        "apiVersion": f"{kq.GROUP}/{kq.VERSION}", "kind": "ResourceFlavor",
        "metadata": {"name": flavor}})
    custom.create_cluster_custom_object(kq.GROUP, kq.VERSION, "clusterqueues", {
        "apiVersion": f"{kq.GROUP}/{kq.VERSION}", "kind": "ClusterQueue",
        "metadata": {"name": cq},
        "spec": {"namespaceSelector": {},
                 "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{
                     "name": flavor, "resources": [
                         {"name": "cpu", "nominalQuota": "16"},
                         {"name": "memory", "nominalQuota": "64Gi"},
                         {"name": GPU, "nominalQuota": 1}]}]}]}})
    custom.create_namespaced_custom_object(kq.GROUP, kq.VERSION, namespace, "localqueues", {
        "apiVersion": f"{kq.GROUP}/{kq.VERSION}", "kind": "LocalQueue",
        "metadata": {"name": "gpu", "namespace": namespace}, "spec": {"clusterQueue": cq}})
    yield "gpu"
    for kind, name in (("clusterqueues", cq), ("resourceflavors", flavor)):
        try:  # Kueue removes its finalizers once nothing uses them (the runs are done)
            custom.delete_cluster_custom_object(kq.GROUP, kq.VERSION, kind, name)
        except client.ApiException as exc:
            if exc.status != 404:
                raise


@pytest.fixture
def operator(kubectl, kube_env, k8s_api, namespace, s3, tmp_path):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "cream-s3"}, "stringData": s3.env()})
    op = OperatorProcess(kube_env, namespace, tmp_path, f"s3://{s3.make_bucket()}/runs").start()
    yield op
    op.stop()


def _gpus(workload: dict) -> int:
    total = 0
    for ps in workload["spec"]["podSets"]:
        for c in ps["template"]["spec"]["containers"]:
            res = c.get("resources") or {}
            total += int((res.get("limits") or res.get("requests") or {}).get(GPU, 0)) * ps["count"]
    return total


def _true(obj: dict, type_: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == type_ and c["status"] == "True"), None)


@dataclass
class Observer:
    """Watches the namespace's Kueue Workloads and polls the runs' status, keeping what a user
    would have seen: how many GPU Workloads held quota at each moment, whether one waited while
    another held it, and every status of the runs."""

    api: client.ApiClient
    namespace: str
    holding: dict[str, int] = field(default_factory=dict)  # GPU workloads holding quota
    max_gpus_held: int = 0
    waited_for_quota: list[str] = field(default_factory=list)  # pending while quota was held
    statuses: list[tuple[float, str, dict]] = field(default_factory=list)  # (time, run, status)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Observer:
        self.threads = [threading.Thread(target=f, daemon=True) for f in (self._watch, self._poll)]
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout=15)

    def _on_workload(self, wl: dict) -> None:
        name, gpus = wl["metadata"]["name"], _gpus(wl)
        if not gpus:
            return
        if _true(wl, "QuotaReserved") and not _true(wl, "Finished"):
            self.holding[name] = gpus
        else:
            self.holding.pop(name, None)
            if not _true(wl, "Finished") and self.holding:
                self.waited_for_quota.append(name)
        self.max_gpus_held = max(self.max_gpus_held, sum(self.holding.values()))

    def _watch(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        version = ""
        while not self.stop_event.is_set():
            w = watch.Watch()
            try:
                # From the start (resourceVersion ""): every Workload event, in the API's order.
                for ev in w.stream(custom.list_namespaced_custom_object, kq.GROUP, kq.VERSION,
                                   self.namespace, "workloads", resource_version=version,
                                   timeout_seconds=5):
                    obj = ev["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if ev["type"] in ("ADDED", "MODIFIED"):
                        self._on_workload(obj)
                    elif ev["type"] == "DELETED":
                        self.holding.pop(obj["metadata"]["name"], None)
                    if self.stop_event.is_set():
                        break
            except Exception:  # noqa: BLE001 - an expired resourceVersion, or teardown
                version = ""
                time.sleep(0.3)
            finally:
                w.stop()

    def _poll(self) -> None:
        custom = client.CustomObjectsApi(self.api)
        while not self.stop_event.is_set():
            for run in custom.list_namespaced_custom_object(
                    GROUP, VERSION, self.namespace, PLURAL)["items"]:
                self.statuses.append((time.time(), run["metadata"]["name"],
                                      run.get("status") or {}))
            time.sleep(0.25)


def _ts(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def test_two_runs_share_one_gpu_through_kueue(k8s_api, kubectl, namespace, kueue, queue,
                                              operator, wait_until):
    custom = client.CustomObjectsApi(k8s_api)
    observer = Observer(k8s_api, namespace).start()
    t0 = time.monotonic()
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump_all([
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "CreamRun", "metadata": {"name": name},
             "spec": _spec(queue)} for name in RUNS]))

        def finished():
            phases = {}
            for name in RUNS:
                status = custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name).get("status") or {}
                phases[name] = status.get("phase")
            return phases if all(p in ("Succeeded", "Failed") for p in phases.values()) else None

        try:
            phases = wait_until(finished, RUN_TIMEOUT, "both runs to finish", interval=1)
        except AssertionError:
            raise AssertionError(f"operator log:\n{operator.log_text()[-3000:]}\n"
                                 f"kueue log:\n{kueue.log.read_text()[-3000:]}") from None
    finally:
        observer.stop()
    took = time.monotonic() - t0
    statuses = {name: custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name)["status"] for name in RUNS}
    assert phases == dict.fromkeys(RUNS, "Succeeded"), json.dumps(statuses, indent=1)[-4000:]

    # Kueue admitted every stage Job through the queue: one Workload each, all finished.
    workloads = custom.list_namespaced_custom_object(
        kq.GROUP, kq.VERSION, namespace, "workloads")["items"]
    steps = [s for st in statuses.values() for s in st["steps"]]
    assert len(steps) == 12 and len(workloads) == len(steps)
    assert all(_true(w, "Finished") and w["status"]["admission"]["clusterQueue"]
               == f"{namespace}-cq" for w in workloads)

    # Never two GPU stages holding quota at once, and stages did wait for it.
    assert observer.max_gpus_held == 1
    assert observer.waited_for_quota, "no GPU stage ever waited for quota"

    # The same from the Jobs: a GPU Job starts (is admitted) only after the previous one ended.
    jobs = client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items
    gpu_jobs = sorted((j for j in jobs if j.spec.template.spec.containers[0].resources.limits
                       and GPU in j.spec.template.spec.containers[0].resources.limits),
                      key=lambda j: j.status.start_time)
    assert len(gpu_jobs) == 10
    for before, after in zip(gpu_jobs, gpu_jobs[1:], strict=False):
        assert after.status.start_time >= before.status.completion_time, (
            f"{after.metadata.name} started at {after.status.start_time}, before "
            f"{before.metadata.name} completed at {before.status.completion_time}")

    # Every stage records when it was admitted; the Job's startTime is that moment.
    started = {j.metadata.name: j.status.start_time for j in jobs}
    for s in steps:
        assert s["admissionTime"] and _ts(s["admissionTime"]) >= _ts(s["startTime"]), s
        # (the operator may see the Job resumed a moment before the Job controller stamps it)
        assert abs((_ts(s["admissionTime"]) - started[s["job"]]).total_seconds()) <= 2, s

    # A stage held back showed as waiting for admission, never as running: in the step, in the
    # run's phase and message and in its Progressing condition.
    waiting = "waiting for admission by Kueue LocalQueue gpu"
    seen_pending_run = False
    for _, _, status in observer.statuses:
        message = status.get("message") or ""
        said_running = set(message.split(";")[0].removeprefix("running ").split(", ")) \
            if message.startswith("running ") else set()
        for s in status.get("steps") or []:
            if s["phase"] == "Pending":
                assert s.get("message") == waiting and "admissionTime" not in s, s
                assert f"{s['key']} {waiting}" in message and s["key"] not in said_running, \
                    message
            if s["phase"] == "Running":
                assert s.get("admissionTime"), s  # running only once admitted
        if status.get("phase") == "Pending":
            seen_pending_run = True
            prog = next(c for c in status["conditions"] if c["type"] == "Progressing")
            assert (prog["status"], prog["reason"]) == ("False", "WaitingForAdmission")
            assert status["message"].endswith(waiting), status["message"]
    assert seen_pending_run, "no run was ever seen waiting for admission as a whole"
    waited_steps = [s for s in steps if _ts(s["admissionTime"]) > _ts(s["startTime"])]
    assert waited_steps, "no stage waited for admission"

    # The events tell it too.
    for name in RUNS:
        reasons = [e.reason for e in client.CoreV1Api(k8s_api).list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={name}").items]
        assert reasons.count("WaitingForAdmission") >= 6, reasons
        assert "StageAdmitted" in reasons and "StageStarted" not in reasons, reasons
    print(f"two queued runs (12 stages) finished in {took:.0f}s")
