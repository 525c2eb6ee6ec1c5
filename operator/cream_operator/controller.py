"""One reconcile of one CreamRun against the API server: observe, decide, act.

The decision is reconcile.decide (pure); this module is the I/O around it. It reads the run and
its Jobs, and a finished Job's Pod (its termination message carries the stage's metrics), from
what the watches delivered (cache.WatchCache, fed by the kopf handlers), not from a GET and LISTs
per event.
One reconcile per run at a time, with the events of a burst folded into one more pass
(coalesce.Coalescer). The status is patched with the resourceVersion the decision was made on, so
a decision on a stale copy is refused (409) and made again on a fresh GET, never applied.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from datetime import UTC, datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import jobs, observe, policy
from .actionlog import action
from .cache import JOB_UID_LABEL, WatchCache
from .coalesce import Coalescer
from .config import OperatorConfig
from .metrics import Metrics
from .reconcile import Decision, Event, decide, rejected
from .spec import GROUP, KIND, PLURAL, VERSION, CreamRunSpec, CreamRunStatus

log = logging.getLogger(__name__)


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_message(exc: ApiException) -> str:
    """The API server's own words on a refused request (its Status message), else the reason."""
    try:
        return json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{exc.status} {exc.reason}"


def event_name(run_name: str, job_uid: str, reason: str) -> str:
    """The name of the event a Job has once (reconcile.Event.job): the same on every try, so the
    API server keeps one. A valid name for any run name (at most 253 characters)."""
    digest = hashlib.sha256(f"{job_uid}/{reason}".encode()).hexdigest()[:16]
    return f"{run_name[:200].rstrip('.-')}.{digest}"


class Controller:
    def __init__(self, api: client.ApiClient, config: OperatorConfig, metrics: Metrics):
        self.api = api
        self.config = config
        self.metrics = metrics
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.cache = WatchCache()
        self._passes = Coalescer()
        self._last_pass: dict[tuple[str, str], float] = {}  # run -> when its last pass began

    # -- what the watches deliver (the kopf handlers call these) ---------------------------------

    def run_seen(self, run: dict) -> None:
        self.cache.run_seen(run)

    def job_seen(self, event: dict) -> None:
        if event.get("type") == "DELETED":
            self.cache.job_gone(event["object"])
        else:
            self.cache.job_seen(event["object"])

    def pod_seen(self, event: dict) -> None:
        if event.get("type") == "DELETED":
            self.cache.pod_gone(event["object"])
        else:
            self.cache.pod_seen(event["object"])

    def create_failure_seen(self, event: dict) -> tuple[str, str] | None:
        """A Job's FailedCreate event; returns the run to reconcile, when the Job is ours."""
        if event.get("type") == "DELETED":
            self.cache.create_failure_gone(event["object"])
            return None
        return self.cache.create_failure_seen(event["object"])

    # -- observe ---------------------------------------------------------------------------------

    def _get_run(self, namespace: str, name: str) -> dict | None:
        try:
            run = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                           name)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        self.cache.run_fresh(run)
        return run

    def _jobs_of(self, run: dict) -> list[dict]:
        """The run's Jobs as the watch delivered them; listed afresh when the status names a
        running or pending step's Job that the cache does not hold (a restart, or a Job deleted
        by hand)."""
        meta = run["metadata"]
        held = self.cache.jobs(meta["uid"])
        names = {j["metadata"]["name"] for j in held}
        # Pending: a Job created suspended, waiting for Kueue's admission, exists too
        running = {s.get("job") for s in (run.get("status") or {}).get("steps", [])
                   if s.get("phase") in ("Running", "Pending")}
        if running <= names:
            return held
        listed = self.batch.list_namespaced_job(
            meta["namespace"], label_selector=f"{jobs.LABEL_RUN_UID}={meta['uid']}")
        fresh = [self.api.sanitize_for_serialization(j) for j in listed.items]
        self.cache.replace_jobs(meta["uid"], fresh)
        return self.cache.jobs(meta["uid"])

    def _observe_jobs(self, run: dict) -> tuple[list[observe.JobView], dict[str, str]]:
        """The JobViews the decision needs, and each Job's uid by name (for deletes)."""
        meta = run["metadata"]
        finished = {s["key"] for s in (run.get("status") or {}).get("steps", [])
                    if s.get("phase") in ("Succeeded", "Failed")}
        views, uids = [], {}
        for job in self._jobs_of(run):
            job_meta = job["metadata"]
            if job_meta.get("deletionTimestamp"):
                continue  # a Job being deleted (a retried stage's) no longer counts
            uids[job_meta["name"]] = job_meta["uid"]
            key = (job_meta.get("annotations") or {}).get(jobs.ANNOTATION_STEP)
            if key in finished:
                views.append(observe.job_view(job, []))
                continue
            if not observe.needs_pods(job):
                # An active Job's Pods matter only after a FailedCreate (observe.creation_failure)
                failures = self.cache.create_failures(job_meta["uid"])
                pods = self.cache.pods(job_meta["uid"]) if failures else []
                views.append(observe.job_view(job, pods, failures))
                continue
            pods = self.cache.pods(job_meta["uid"])
            if not observe.has_ended_pod(job, pods):
                # The Pod watch has not delivered the Pod's end yet: list them. By the Job's uid:
                # a retried stage's new Job has the old one's name.
                pod_list = self.core.list_namespaced_pod(
                    meta["namespace"], label_selector=f"{JOB_UID_LABEL}={job_meta['uid']}")
                listed = [self.api.sanitize_for_serialization(p) for p in pod_list.items]
                self.cache.replace_pods(job_meta["uid"], listed)
                pods = self.cache.pods(job_meta["uid"])
            views.append(observe.job_view(job, pods))
        return views, uids

    # -- act -------------------------------------------------------------------------------------

    def _create(self, run: dict, decision: Decision) \
            -> tuple[dict[str, str], list[tuple[str, str]]]:
        """Create the decision's Jobs (and Services). Returns each one's uid by name, where
        known, and (step key, why) of each the API server refused as invalid (the spec it was
        made from is wrong: asking again cannot help)."""
        meta = run["metadata"]
        ns, who = meta["namespace"], _who(run)
        uids: dict[str, str] = {}
        refused: list[tuple[str, str]] = []
        for step in decision.create:
            manifest = jobs.job_manifest(run, decision.spec, step, self.config)
            name = manifest["metadata"]["name"]
            service = jobs.headless_service(run, step, manifest)
            # A handler that died after creating the Job runs again: AlreadyExists is success.
            try:
                if service is not None and self._ignore_conflict(
                        lambda s=service: self.core.create_namespaced_service(ns, s)):
                    action("service created", run=who, service=service["metadata"]["name"],
                           step=step.key)
                created = self.api.sanitize_for_serialization(
                    self.batch.create_namespaced_job(ns, manifest))
            except ApiException as exc:
                if exc.status in (400, 422):
                    refused.append((step.key, _api_message(exc)))
                    continue
                if exc.status != 409:
                    raise
                uid = self._existing_job_uid(meta, name)
                if uid:
                    uids[name] = uid
                continue
            action("job created", run=who, job=name, step=step.key)
            uids[name] = created["metadata"]["uid"]
            # The next event of this run must see the Job, whether or not its watch event came.
            self.cache.job_seen(created)
        return uids, refused

    def _existing_job_uid(self, run_meta: dict, name: str) -> str | None:
        """The uid of a Job that was there already (created by a pass that died), unless it is
        on its way out (a retried stage's old Job)."""
        held = next((j for j in self.cache.jobs(run_meta["uid"])
                     if j["metadata"]["name"] == name), None)
        if held is None:
            try:
                held = self.api.sanitize_for_serialization(
                    self.batch.read_namespaced_job(name, run_meta["namespace"]))
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return None
        if held["metadata"].get("deletionTimestamp"):
            return None
        return held["metadata"]["uid"]

    @staticmethod
    def _ignore_conflict(call) -> bool:
        """Create; False when it existed already."""
        try:
            call()
        except ApiException as exc:
            if exc.status != 409:
                raise
            return False
        return True

    def _delete(self, run: dict, decision: Decision, uids: dict[str, str]) -> None:
        for name in decision.delete:
            # Only the Job the decision saw: a retried stage's new Job has the same name.
            options = client.V1DeleteOptions(
                propagation_policy="Background",
                preconditions=client.V1Preconditions(uid=uids[name]) if name in uids else None)
            try:
                self.batch.delete_namespaced_job(name, run["metadata"]["namespace"], body=options)
                action("job deleted", run=_who(run), job=name)
            except ApiException as exc:
                if exc.status not in (404, 409):
                    raise
            # Gone for the next decision too, before its DELETED event comes.
            self.cache.job_gone({"metadata": {
                "name": name, "uid": uids.get(name),
                "labels": {jobs.LABEL_RUN_UID: run["metadata"]["uid"]}}}, deleted_by_us=True)

    def _post(self, run: dict, events: list[Event], job_uids: dict[str, str],
              once: bool) -> None:
        """Post the events a Job has once (once=True; named after the Job's uid, so posting one
        again is refused by the API server), or the others. A Job's event whose Job is not
        there (its name still held by a Job being deleted) waits for the Job that will be."""
        for event in events:
            if once != bool(event.job):
                continue
            if event.job is None:
                self._event(run, event.type, event.reason, event.message)
            elif event.job in job_uids:
                self._event(run, event.type, event.reason, event.message,
                            event_name(run["metadata"]["name"], job_uids[event.job],
                                       event.reason))

    def _event(self, run: dict, type_: str, reason: str, message: str,
               name: str | None = None) -> None:
        meta = run["metadata"]
        stamp = now_rfc3339()
        named = {"name": name} if name else {"generateName": f"{meta['name']}."}
        body = {
            "metadata": {**named, "namespace": meta["namespace"]},
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
            if exc.status == 409 and name:
                return  # posted before this restart or retry
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
            patched = self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], body)
        except ApiException as exc:
            if exc.status == 409:  # someone else moved the run on: decide again on fresh state
                self.cache.run_stale(meta["namespace"], meta["name"])
                return False
            raise
        self.cache.run_fresh(patched)
        old = (run.get("status") or {}).get("phase")
        if decision.status.phase != old:
            action("phase changed", run=_who(run), phase_from=old,
                   phase=decision.status.phase, reason=_reason(decision))
        return True

    # -- the loop body ---------------------------------------------------------------------------

    def reconcile(self, namespace: str, name: str) -> Decision | None:
        """Reconcile a run now, or, when a reconcile of it is in progress, have that one make one
        more pass (then None is returned here)."""
        key = (namespace, name)
        if not self._passes.enter(key):
            return None
        try:
            while True:
                self._last_pass[key] = time.monotonic()
                decision = self._reconcile_once(namespace, name)
                if not self._passes.done(key):
                    return decision
        except BaseException:
            self._passes.abandon(key)
            raise

    def _reconcile_once(self, namespace: str, name: str, attempts: int = 3) -> Decision | None:
        started = time.monotonic()
        try:
            for attempt in range(attempts):
                # The watch's copy first; after a 409, a fresh GET.
                run = self.cache.run(namespace, name) if attempt == 0 else None
                if run is None:
                    run = self._get_run(namespace, name)
                if run is None or run["metadata"].get("deletionTimestamp"):
                    return None
                views, uids = self._observe_jobs(run)
                decision = decide(run, views, now_rfc3339(), self.config)
                self._delete(run, decision, uids)
                # Each Job's uid, for its events: a deleted Job's name may be a new Job's now.
                job_uids = {n: u for n, u in uids.items() if n not in decision.delete}
                created, refused = self._create(run, decision)
                job_uids.update(created)
                if refused:
                    decision = rejected(decision, refused, now_rfc3339(),
                                        run["metadata"].get("generation"))
                # A Job's own events before the status write: a kill after that write cannot
                # lose them, and one before it makes the restarted operator post them again,
                # which the API server refuses (see reconcile.Event.job).
                self._post(run, decision.events, job_uids, once=True)
                if self._patch_status(run, decision):
                    self._post(run, decision.events, job_uids, once=False)
                    for stage, seconds in decision.finished:
                        self.metrics.stage_finished(stage, seconds)
                    for stage in decision.failed:
                        self.metrics.stage_failed(stage)
                    self.metrics.observe_run(namespace, name, decision.status)
                    return decision
            log.info("status of %s/%s kept changing; the next event retries", namespace, name)
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
        refused = policy.refusals(spec, self.config)
        if refused:  # its image, account or Secret: never with the operator's rights
            return "failed: not allowed: " + "; ".join(refused)
        manifest = jobs.cleanup_job_manifest(run, spec, root, self.config)
        if self._ignore_conflict(
                lambda: self.batch.create_namespaced_job(meta["namespace"], manifest)):
            action("cleanup started", run=f"{namespace}/{name}",
                   job=manifest["metadata"]["name"], artifacts=root)
        job = self.api.sanitize_for_serialization(self.batch.read_namespaced_job(
            manifest["metadata"]["name"], meta["namespace"]))
        state = observe.job_state(job)
        if state == "succeeded":
            return "done"
        if state == "failed":
            return f"failed: the Job {manifest['metadata']['name']} could not delete {root}"
        return "running"

    def last_passes(self) -> dict[tuple[str, str], float]:
        """When each run's last reconcile began (time.monotonic()), for the resync."""
        return dict(self._last_pass)

    def forget(self, namespace: str, name: str) -> None:
        self._last_pass.pop((namespace, name), None)
        self.metrics.forget_run(namespace, name)
        self.cache.run_gone(namespace, name)


def _reason(decision: Decision) -> str | None:
    """The reason of the condition the new phase set True (Progressing for Running/Pending)."""
    types = {"Running": "Progressing", "Pending": "Progressing"}
    wanted = types.get(decision.status.phase, decision.status.phase)
    return next((c.reason for c in decision.status.conditions if c.type == wanted), None)


def _who(run: dict) -> str:
    return f"{run['metadata']['namespace']}/{run['metadata']['name']}"
