"""What the operator has seen of its CreamRuns, their Jobs and the Jobs' Pods, kept from the watch
events kopf hands to the handlers, so that a reconcile reads memory instead of a GET and LISTs per
event (a finished stage's metrics come from its Pod's termination message).

The watch is the source; two things make reading it safe:
- A run we just wrote (a status patch) or read afresh (a GET after a 409) is newer than the last
  watch event of it until the watch delivers that version: until then, reads return the newer copy.
  Status patches carry the resourceVersion they were decided on, so a decision on a copy that is
  stale after all is refused (409) and made again on a fresh GET: never applied.
- A Job the operator just created is recorded from the create response, so the next event of the
  run does not see its step "running without a Job". A Job the cache does not hold although the
  run's status names it (a restart, before the Jobs' events came; a Job deleted by hand) makes the
  controller list that run's Jobs afresh (controller.Controller._observe_jobs); a finished Job
  whose Pod's end the Pod watch has not delivered yet makes it list that Job's Pods.

Thread-safe: kopf runs the sync handlers in a thread pool.
"""

from __future__ import annotations

import threading
from collections import deque

from .jobs import ANNOTATION_STEP, KUEUE_QUEUE, LABEL_RUN, LABEL_RUN_UID
from .observe import failure_of_event

RunKey = tuple[str, str]  # (namespace, name)
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its Pods
RECENT_VERSIONS = 16  # resourceVersions remembered per run, to spot a copy the watch has passed


def job_projection(job: dict) -> dict:
    """The parts of a Job that observe.job_view and the controller read: a few hundred bytes per
    Job kept instead of the whole object."""
    meta = job.get("metadata") or {}
    status = job.get("status") or {}
    return {
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            # the run it belongs to, and the Kueue LocalQueue it waits in (a suspended queued Job
            # is waiting for admission; its startTime is when it was admitted)
            "labels": {k: v for k, v in (meta.get("labels") or {}).items()
                       if k in (LABEL_RUN, LABEL_RUN_UID, KUEUE_QUEUE)},
            "annotations": {ANNOTATION_STEP: (meta.get("annotations") or {}).get(ANNOTATION_STEP)},
            **({"deletionTimestamp": meta["deletionTimestamp"]}
               if meta.get("deletionTimestamp") else {}),
        },
        # the Pods it wants at once: fewer active, after a FailedCreate, is a Job that cannot
        # create them (observe.creation_failure)
        "spec": {k: (job.get("spec") or {}).get(k) for k in ("suspend", "parallelism")},
        "status": {k: status[k] for k in ("conditions", "startTime", "completionTime", "active")
                   if k in status},
    }


def pod_projection(pod: dict) -> dict:
    """The parts of a Pod that observe.job_view reads: its phase and how its containers ended."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    return {
        "metadata": {"name": meta.get("name"), "uid": meta.get("uid"),
                     "creationTimestamp": meta.get("creationTimestamp"),
                     "labels": {JOB_UID_LABEL: (meta.get("labels") or {}).get(JOB_UID_LABEL)}},
        "status": {
            "phase": status.get("phase"),
            "containerStatuses": [
                {"state": {"terminated": (cs.get("state") or {})["terminated"]}}
                for cs in status.get("containerStatuses") or []
                if (cs.get("state") or {}).get("terminated")],
        },
    }


class WatchCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[RunKey, dict] = {}
        self._newer: dict[RunKey, dict] = {}  # our own writes/GETs the watch has not delivered yet
        self._seen: dict[RunKey, deque[str]] = {}
        self._jobs: dict[str, dict[str, dict]] = {}  # run uid -> Job name -> projection
        self._pods: dict[str, dict[str, dict]] = {}  # Job uid -> Pod name -> projection
        # Job uid -> Event name -> (when, message) of the Job controller's FailedCreate events
        self._failures: dict[str, dict[str, tuple[str, str]]] = {}
        # uids of Jobs we deleted whose DELETED event has not come: an older event of one of them
        # still on its way must not bring it back (a retried stage would fail again on it)
        self._deleted: set[str] = set()

    # -- runs --------------------------------------------------------------------------------------

    def run_seen(self, run: dict) -> None:
        """A watch event of a run (in the watch's order)."""
        meta = run["metadata"]
        key = (meta["namespace"], meta["name"])
        rv = meta.get("resourceVersion")
        with self._lock:
            self._runs[key] = run
            seen = self._seen.setdefault(key, deque(maxlen=RECENT_VERSIONS))
            seen.append(rv)
            newer = self._newer.get(key)
            if newer is not None and newer["metadata"].get("resourceVersion") == rv:
                del self._newer[key]  # the watch has caught up with our copy

    def run_fresh(self, run: dict) -> None:
        """A copy of a run at least as new as anything the watch delivered (a write's response or
        a GET): read it until the watch delivers its version."""
        meta = run["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._lock:
            if meta.get("resourceVersion") in self._seen.get(key, ()):
                self._newer.pop(key, None)  # the watch got there first
            else:
                self._newer[key] = run

    def run_stale(self, namespace: str, name: str) -> None:
        """The copy we read was refused as stale (409): forget our own copy."""
        with self._lock:
            self._newer.pop((namespace, name), None)

    def run(self, namespace: str, name: str) -> dict | None:
        key = (namespace, name)
        with self._lock:
            return self._newer.get(key) or self._runs.get(key)

    def run_keys(self) -> list[RunKey]:
        """Every run the watch delivered and has not deleted."""
        with self._lock:
            return list(self._runs)

    def run_gone(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._lock:
            run = self._runs.pop(key, None)
            self._newer.pop(key, None)
            self._seen.pop(key, None)
            if run is not None:
                for job in self._jobs.pop(run["metadata"].get("uid"), {}).values():
                    self._pods.pop(job["metadata"]["uid"], None)
                    self._failures.pop(job["metadata"]["uid"], None)

    # -- jobs --------------------------------------------------------------------------------------

    def job_seen(self, job: dict) -> None:
        """A watch event of a Job, or the response of creating one."""
        view = job_projection(job)
        meta = view["metadata"]
        run_uid = meta["labels"].get(LABEL_RUN_UID)
        if not run_uid:
            return
        with self._lock:
            if meta["uid"] in self._deleted:
                return
            self._jobs.setdefault(run_uid, {})[meta["name"]] = view

    def job_gone(self, job: dict, deleted_by_us: bool = False) -> None:
        """A Job's DELETED event, or (deleted_by_us) our own successful delete of it."""
        meta = job.get("metadata") or {}
        run_uid = (meta.get("labels") or {}).get(LABEL_RUN_UID)
        with self._lock:
            if deleted_by_us:
                self._deleted.add(meta.get("uid"))
            else:
                self._deleted.discard(meta.get("uid"))
            jobs = self._jobs.get(run_uid)
            if jobs is not None:
                held = jobs.get(meta.get("name"))
                # A retried stage's new Job may already hold the name: drop only this one.
                if held is not None and held["metadata"]["uid"] == meta.get("uid"):
                    del jobs[meta["name"]]
            self._pods.pop(meta.get("uid"), None)
            self._failures.pop(meta.get("uid"), None)

    def jobs(self, run_uid: str) -> list[dict]:
        with self._lock:
            return list(self._jobs.get(run_uid, {}).values())

    def replace_jobs(self, run_uid: str, jobs: list[dict]) -> None:
        """A fresh LIST of one run's Jobs."""
        with self._lock:
            self._jobs[run_uid] = {j["metadata"]["name"]: job_projection(j) for j in jobs}

    # -- pods -------------------------------------------------------------------------------------

    def pod_seen(self, pod: dict) -> None:
        view = pod_projection(pod)
        job_uid = view["metadata"]["labels"][JOB_UID_LABEL]
        if not job_uid:
            return
        with self._lock:
            self._pods.setdefault(job_uid, {})[view["metadata"]["name"]] = view

    def pod_gone(self, pod: dict) -> None:
        meta = pod.get("metadata") or {}
        job_uid = (meta.get("labels") or {}).get(JOB_UID_LABEL)
        with self._lock:
            pods = self._pods.get(job_uid)
            if pods is not None:
                pods.pop(meta.get("name"), None)
                if not pods:
                    del self._pods[job_uid]

    def pods(self, job_uid: str) -> list[dict]:
        with self._lock:
            return list(self._pods.get(job_uid, {}).values())

    def replace_pods(self, job_uid: str, pods: list[dict]) -> None:
        """A fresh LIST of one Job's Pods."""
        with self._lock:
            self._pods[job_uid] = {p["metadata"]["name"]: pod_projection(p) for p in pods}

    # -- the Job controller's FailedCreate events -----------------------------------------------

    def create_failure_seen(self, event: dict) -> RunKey | None:
        """A FailedCreate Event of a Job (the watch selects only those). Returns the run of the
        Job when it is one of ours, for a reconcile. Kept by the Job's uid even when the Job is
        not known yet (a restart may deliver the Events first); the Event's own TTL (an hour by
        default) ends it through its DELETED event, and so does its Job's."""
        job_uid = (event.get("involvedObject") or {}).get("uid")
        failure = failure_of_event(event)
        if not job_uid or failure is None:
            return None
        with self._lock:
            self._failures.setdefault(job_uid, {})[event["metadata"]["name"]] = failure
            return self._run_of_job(job_uid)

    def create_failure_gone(self, event: dict) -> None:
        job_uid = (event.get("involvedObject") or {}).get("uid")
        with self._lock:
            failures = self._failures.get(job_uid)
            if failures is not None:
                failures.pop(event["metadata"]["name"], None)
                if not failures:
                    del self._failures[job_uid]

    def create_failures(self, job_uid: str) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._failures.get(job_uid, {}).values())

    def _run_of_job(self, job_uid: str) -> RunKey | None:
        """A scan, not an index: FailedCreate events are rare."""
        for jobs in self._jobs.values():
            for job in jobs.values():
                meta = job["metadata"]
                if meta["uid"] == job_uid and meta["labels"].get(LABEL_RUN):
                    return meta["namespace"], meta["labels"][LABEL_RUN]
        return None
