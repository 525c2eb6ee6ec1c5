"""kopf handlers: thin. Every event of a CreamRun or of one of its Jobs, and a slow resync, lead to
a reconcile of that run (level-triggered: the decision looks at the whole state each time; events
that come while it runs fold into one more pass). Each event first updates the controller's copy
of what the watches delivered; stage Pods' events only do that (their termination messages).

The Controller arrives in kopf's memo (startup.run_operator puts it there), as kopf documents for
shared objects.
"""

from __future__ import annotations

import logging

import kopf

from . import jobs
from .controller import Controller
from .spec import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

EVENTS = ("", "v1", "events")
FAILED_CREATE = "involvedObject.kind=Job,reason=FailedCreate"

RESYNC_SECONDS = 60.0


def _controller(memo: kopf.Memo) -> Controller:
    return memo.controller


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_) -> None:
    # kopf keeps its own bookkeeping in annotations, so our status schema stays fully typed.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP)
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = memo.workers  # cream operator --workers
    # Of all Events, only the Job controller's "cannot create a Pod" ones, filtered by the API
    # server: one quiet watch instead of a LIST per waiting Job.
    settings.watching.field_selectors[EVENTS] = FAILED_CREATE


@kopf.on.event(GROUP, VERSION, PLURAL)
def run_event(event: dict, namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    if event.get("type") == "DELETED":
        _controller(memo).forget(namespace, name)  # its Jobs go through their ownerReferences
        return
    _controller(memo).run_seen(event["object"])  # the controller reads the watch's copy
    _controller(memo).reconcile(namespace, name)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": jobs.MANAGED_BY})
def job_event(event: dict, namespace: str, labels: dict, memo: kopf.Memo, **_) -> None:
    _controller(memo).job_seen(event)
    run = labels.get(jobs.LABEL_RUN)
    if run:
        _controller(memo).reconcile(namespace, run)


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": jobs.MANAGED_BY})
def pod_event(event: dict, memo: kopf.Memo, **_) -> None:
    """Stage Pods' ends, for the termination messages; their Jobs' events drive the reconcile."""
    _controller(memo).pod_seen(event)


@kopf.on.event(*EVENTS)
def failed_create_event(event: dict, memo: kopf.Memo, **_) -> None:
    """A Job that cannot create its Pods (admission, quota, a missing ServiceAccount): the Job
    controller says so only in an Event on the Job; its status shows nothing."""
    run = _controller(memo).create_failure_seen(event)
    if run is not None:
        _controller(memo).reconcile(*run)


def _deletes_artifacts(spec, **_) -> bool:
    return spec.get("cleanupPolicy") == "Delete"


# kopf puts its finalizer only on the runs this handler's filter matches (and takes it off a run
# whose policy changes back): a run that keeps its artifacts is deleted without the operator.
@kopf.on.delete(GROUP, VERSION, PLURAL, when=_deletes_artifacts)
def delete_artifacts(body, namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    """cleanupPolicy: Delete. kopf holds a finalizer until this returns."""
    outcome = _controller(memo).cleanup(namespace, name)
    if outcome == "running":
        raise kopf.TemporaryError("waiting for the cleanup Job", delay=5)
    if outcome != "done":
        # Never block a deletion forever on storage: say so, and let the object go.
        kopf.warn(body, reason="CleanupFailed", message=f"artifacts kept: {outcome}")


def resync(namespace: str, name: str, memo: kopf.Memo, **_) -> None:
    """The resync (resync.py) as a kopf timer, for an operator with peering only: kopf pauses it
    with the operator, at the cost of a finalizer on every run (kopf's, for its timers)."""
    _controller(memo).reconcile(namespace, name)


def register_peering_resync() -> None:
    kopf.timer(GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, idle=RESYNC_SECONDS)(resync)
