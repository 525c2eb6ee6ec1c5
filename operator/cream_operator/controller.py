"""One reconcile of one CreamRun against the API server: observe, decide, act.

The decision is reconcile.decide (pure); this module is the I/O around it. It reads fresh state
from the API server rather than a cache, holds a lock per run so two events of the same run never
act at once, and patches the status with the resourceVersion it read, so a stale decision is
refused (409) instead of overwriting newer progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import jobs, observe
from .config import OperatorConfig
from .metrics import Metrics
from .reconcile import Decision, decide
from .spec import GROUP, KIND, PLURAL, VERSION, CreamRunSpec, CreamRunStatus

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Controller:
    def __init__(self, api: client.ApiClient, config: OperatorConfig, metrics: Metrics):
        self.api = api
        self.config = config
        self.metrics = metrics
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self._locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)

    # -- observe ---------------------------------------------------------------------------------

    def _get_run(self, namespace: str, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _observe_jobs(self, run: dict) -> list[observe.JobView]:
        meta = run["metadata"]
        listed = self.batch.list_namespaced_job(
            meta["namespace"], label_selector=f"{jobs.LABEL_RUN_UID}={meta['uid']}")
        finished = {s["key"] for s in (run.get("status") or {}).get("steps", [])
                    if s.get("phase") in ("Succeeded", "Failed")}
        views = []
        for obj in listed.items:
            job = self.api.sanitize_for_serialization(obj)
            if job["metadata"].get("deletionTimestamp"):
                continue  # a Job being deleted (a retried stage's) no longer counts
            key = (job["metadata"].get("annotations") or {}).get(jobs.ANNOTATION_STEP)
            pods: list[dict] = []
            if key not in finished and observe.needs_pods(job):
                # By the Job's uid: a retried stage's new Job has the old one's name.
                pod_list = self.core.list_namespaced_pod(
                    meta["namespace"],
                    label_selector=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}")
                pods = [self.api.sanitize_for_serialization(p) for p in pod_list.items]
            views.append(observe.job_view(job, pods))
        return views

    # -- act -------------------------------------------------------------------------------------

    def _create(self, run: dict, decision: Decision) -> None:
        ns = run["metadata"]["namespace"]
        for step in decision.create:
            manifest = jobs.job_manifest(run, decision.spec, step, self.config)
            service = jobs.headless_service(run, step, manifest)
            if service is not None:
                self._ignore_conflict(lambda s=service: self.core.create_namespaced_service(ns, s))
            # A handler that died after creating the Job runs again: AlreadyExists is success.
            self._ignore_conflict(lambda m=manifest: self.batch.create_namespaced_job(ns, m))

    @staticmethod
    def _ignore_conflict(call) -> None:
        try:
            call()
        except ApiException as exc:
            if exc.status != 409:
                raise

    def _delete(self, run: dict, decision: Decision) -> None:
        for name in decision.delete:
            try:
                self.batch.delete_namespaced_job(
                    name, run["metadata"]["namespace"], propagation_policy="Background")
            except ApiException as exc:
                if exc.status != 404:
                    raise

    def _event(self, run: dict, type_: str, reason: str, message: str) -> None:
        meta = run["metadata"]
        stamp = now_rfc3339()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "name": meta["name"],
                "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": "cream-operator"},
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
            "reportingComponent": "cream-operator", "reportingInstance": "cream-operator",
        }
        try:
            self.core.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:  # events are best effort: never fail a reconcile on them
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc.reason)

    def _patch_status(self, run: dict, decision: Decision) -> bool:
        meta = run["metadata"]
        if decision.status == CreamRunStatus.model_validate(run.get("status") or {}):
            return True  # most events change nothing: skip the write (and the event it causes)
        status = decision.status.model_dump(mode="json", by_alias=True)
        # Merge-patch semantics: a None at the top level removes the field; inside lists, omit.
        for key in ("conditions", "results", "steps"):
            status[key] = [
                {k: v for k, v in item.items() if v is not None} for item in status[key]
            ]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
        except ApiException as exc:
            if exc.status == 409:  # someone else moved the run on: decide again on fresh state
                return False
            raise
        return True

    # -- the loop body ---------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str, attempts: int = 3) -> Decision | None:
        with self._locks[(namespace, name)]:
            started = time.monotonic()
            try:
                for _ in range(attempts):
                    run = self._get_run(namespace, name)
                    if run is None or run["metadata"].get("deletionTimestamp"):
                        return None
                    decision = decide(run, self._observe_jobs(run), now_rfc3339(), self.config)
                    self._delete(run, decision)
                    self._create(run, decision)
                    if self._patch_status(run, decision):
                        for event in decision.events:
                            self._event(run, event.type, event.reason, event.message)
                        for stage, seconds in decision.finished:
                            self.metrics.stage_finished(stage, seconds)
                        for stage in decision.failed:
                            self.metrics.stage_failed(stage)
                        self.metrics.observe_run(namespace, name, decision.status)
                        return decision
                log.info("status of %s/%s kept changing; the next event retries", namespace,
                         name)
                return None
            finally:
                self.metrics.reconcile.observe(time.monotonic() - started)

    def cleanup(self, namespace: str, name: str) -> str:
        """Delete a deleted run's artifacts through a Job; 'done', 'failed: ...' or 'running'."""
        run = self._get_run(namespace, name)  # still there: kopf's finalizer holds it
        if run is None:
            return "done"
        meta = run["metadata"]
        root = (run.get("status") or {}).get("artifacts")
        if not root:
            return "done"  # it never got to write anything
        spec = CreamRunSpec.model_validate(run["spec"])
        manifest = jobs.cleanup_job_manifest(run, spec, root, self.config)
        self._ignore_conflict(
            lambda: self.batch.create_namespaced_job(meta["namespace"], manifest))
        job = self.api.sanitize_for_serialization(self.batch.read_namespaced_job(
            manifest["metadata"]["name"], meta["namespace"]))
        state = observe.job_state(job)
        if state == "succeeded":
            return "done"
        if state == "failed":
            return f"failed: the Job {manifest['metadata']['name']} could not delete {root}"
        return "running"

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget_run(namespace, name)
        self._locks.pop((namespace, name), None)
