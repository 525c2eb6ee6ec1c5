"""What the reconcile decision needs to know of a Job, read from the Job and its Pods.

Pure functions over the API's JSON (camelCase dicts), tested without a cluster.
"""

from __future__ import annotations

import json
from datetime import datetime

from .jobs import ANNOTATION_STEP, KUEUE_QUEUE
from .reconcile import JobView
from .spec import StepMetrics


def parse_metrics(message: str | None) -> StepMetrics | None:
    """A succeeded stage's termination message is `{"stage": ..., "metrics": {...}}`."""
    if not message:
        return None
    try:
        doc = json.loads(message)
        return StepMetrics.model_validate(
            {k: v for k, v in doc.get("metrics", {}).items() if k in StepMetrics.model_fields}
        )
    except (ValueError, AttributeError):
        return None


def _condition(job: dict, type_: str) -> dict | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def _termination(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return terminated
    return {}


def _newest(pods: list[dict], phase: str) -> dict | None:
    matching = [p for p in pods if (p.get("status") or {}).get("phase") == phase]
    return max(matching, key=lambda p: p["metadata"].get("creationTimestamp") or "",
               default=None)


def job_state(job: dict) -> str:
    if _condition(job, "Complete"):
        return "succeeded"
    if _condition(job, "Failed"):
        return "failed"
    if (job.get("spec") or {}).get("suspend") and not (job.get("status") or {}).get("active"):
        return "suspended"
    return "active"


def needs_pods(job: dict) -> bool:
    """Only a finished Job's Pods tell anything more (its metrics or why it failed)."""
    return job_state(job) in ("succeeded", "failed")


def has_ended_pod(job: dict, pods: list[dict]) -> bool:
    """Whether pods hold what job_view reads of a finished Job: a Pod that ended as the Job did."""
    phase = {"succeeded": "Succeeded", "failed": "Failed"}.get(job_state(job))
    return phase is None or _newest(pods, phase) is not None


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def failure_of_event(event: dict) -> tuple[str, str] | None:
    """(when, message) of a core v1 Event: the Job controller's FailedCreate on a Job says when
    it last failed to create a Pod, and the API server's words why (admission, quota, a missing
    ServiceAccount or Secret). Aggregated events move lastTimestamp (legacy recorder) or
    series.lastObservedTime (events.k8s.io recorder) on each repeat."""
    when = (event.get("lastTimestamp") or (event.get("series") or {}).get("lastObservedTime")
            or event.get("eventTime") or event.get("firstTimestamp")
            or (event.get("metadata") or {}).get("creationTimestamp"))
    if not when:
        return None
    return when, (event.get("message") or "").strip()


def creation_failure(job: dict, pods: list[dict], failures: list[tuple[str, str]]) -> str | None:
    """Why an active Job cannot create its Pods, or None: it has fewer Pods than it wants and
    its newest FailedCreate is newer than its newest Pod (a Pod made since means creating works
    again, e.g. the missing ServiceAccount was created or quota freed)."""
    if not failures or job_state(job) != "active":
        return None
    wanted = (job.get("spec") or {}).get("parallelism") or 1
    if ((job.get("status") or {}).get("active") or 0) >= wanted:
        return None
    when, message = max(failures, key=lambda f: _when(f[0]))
    made = [p["metadata"]["creationTimestamp"] for p in pods
            if p["metadata"].get("creationTimestamp")]
    if made and max(_when(m) for m in made) >= _when(when):
        return None
    return message or "FailedCreate (no message)"


def job_view(job: dict, pods: list[dict],
             failures: list[tuple[str, str]] | None = None) -> JobView:
    meta = job["metadata"]
    status = job.get("status") or {}
    state = job_state(job)
    message = metrics = None
    if state == "succeeded":
        # Of a several-Pod Job, only node (rank) 0 commits and reports: the Pod with a message.
        reporting = [p for p in pods if _termination(p).get("message")]
        pod = _newest(reporting, "Succeeded") or _newest(pods, "Succeeded")
        metrics = parse_metrics(_termination(pod).get("message")) if pod else None
    elif state == "failed":
        pod = _newest(pods, "Failed")
        term = _termination(pod) if pod else {}
        cond = _condition(job, "Failed") or {}
        # The stage's own words first; the Job controller's (e.g. BackoffLimitExceeded) else.
        message = (term.get("message") or "").strip() or \
            f"{cond.get('reason', 'Failed')}: {cond.get('message', '')}".strip()
        if term.get("exitCode") is not None:
            message = f"{message} (exit code {term['exitCode']})"
    return JobView(
        name=meta["name"],
        key=(meta.get("annotations") or {}).get(ANNOTATION_STEP, ""),
        state=state,
        queue=(meta.get("labels") or {}).get(KUEUE_QUEUE),
        start_time=status.get("startTime"),
        completion_time=status.get("completionTime")
        or ((_condition(job, "Failed") or {}).get("lastTransitionTime")),
        message=message,
        metrics=metrics,
        create_failure=creation_failure(job, pods, failures or []),
    )
