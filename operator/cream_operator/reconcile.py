"""The reconcile decision: given a CreamRun and the Jobs observed for it, what happens next.

A pure function (`decide`) with no I/O, so every transition is tested without a cluster. The kopf
handlers observe (the run, its Jobs and their Pods), call `decide`, and carry the decision out:
create Jobs (AlreadyExists counts as created), delete failed Jobs that a spec change retries, post
the events, and patch the status. Progress lives in the status, so a restarted operator resumes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from pydantic import ValidationError

from cream_stages.artifacts import join

from . import pipeline, policy
from .config import OperatorConfig
from .jobs import job_name
from .spec import Condition, CreamRunSpec, CreamRunStatus, StepMetrics, StepStatus, problems_of

JobState = Literal["active", "succeeded", "failed", "suspended"]


@dataclass(frozen=True)
class JobView:
    """What the decision needs to know of one stage Job."""

    name: str
    key: str  # the step key, from the Job's annotation
    state: JobState
    # A queued Job is created suspended and runs once its Kueue LocalQueue admits it (the Job
    # controller then sets its startTime): "suspended" means waiting for admission.
    queue: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None  # why it failed (the stage's termination message when it left one)
    metrics: StepMetrics | None = None  # a succeeded stage's metrics, from its termination message
    # An active Job that cannot create its Pods: the Job controller's FailedCreate message.
    create_failure: str | None = None


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    # The Job the event tells of, for the events a Job has once (started, succeeded, failed): the
    # controller names such an event after the Job's uid and posts it before the status write, so
    # an operator killed in between posts it again on restart and the API server refuses the copy.
    job: str | None = None


@dataclass
class Decision:
    status: CreamRunStatus
    create: list[pipeline.Step] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)  # Job names
    events: list[Event] = field(default_factory=list)
    finished: list[tuple[str, float]] = field(default_factory=list)  # (stage, seconds)
    failed: list[str] = field(default_factory=list)  # stages that failed just now
    spec: CreamRunSpec | None = None
    root: str | None = None


def artifact_root(metadata: dict, spec: CreamRunSpec, config: OperatorConfig) -> str | None:
    base = spec.storage.uri or config.storage_uri
    if not base:
        return None
    return join(base, metadata["namespace"], metadata["name"], metadata["uid"])


def _seconds(start: str | None, end: str | None) -> float:
    if not start or not end:
        return 0.0
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


CANNOT_CREATE_PODS = "cannot create its Pods"


def waiting_message(queue: str | None) -> str:
    if queue:
        return f"waiting for admission by Kueue LocalQueue {queue}"
    return "waiting for its suspended Job to be resumed"


def set_condition(conditions: list[Condition], type_: str, status: bool, reason: str,
                  message: str, now: str, generation: int | None) -> list[Condition]:
    """Upsert a metav1.Condition; its lastTransitionTime moves only when its status does."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(type=type_, status=value, reason=reason, message=message,
                    last_transition_time=since, observed_generation=generation)
    return [c for c in conditions if c.type != type_] + [new]


def _conditions(prev: list[Condition], phase: str, reason: str, message: str, now: str,
                generation: int | None) -> list[Condition]:
    """Progressing, Suspended, Succeeded and Failed, always all four; the phase sets one True."""
    conds = list(prev)
    for type_, active in (("Progressing", phase == "Running"), ("Suspended", phase == "Suspended"),
                          ("Succeeded", phase == "Succeeded"), ("Failed", phase == "Failed")):
        # A run whose stages all wait for admission is not progressing: say why.
        says_why = active or (type_ == "Progressing" and phase == "Pending")
        conds = set_condition(conds, type_, active, reason if says_why else phase,
                              message if says_why else "", now, generation)
    return conds


def _finish(prev: CreamRunStatus, generation: int | None, now: str, phase: str, reason: str,
            message: str, **fields) -> CreamRunStatus:
    return prev.model_copy(update={
        "phase": phase,
        "message": message,
        "observed_generation": generation,
        "start_time": prev.start_time or now,
        "conditions": _conditions(prev.conditions, phase, reason, message, now, generation),
        **fields,
    })


def _in_flight(steps) -> tuple[str, str, str]:
    """Phase, reason and message of a run with stages started: Pending while every one of them
    waits for admission, Running as soon as one runs."""
    running = sorted(s.key for s in steps if s.phase == "Running" and not _blocked(s))
    waiting = [s for s in steps if s.phase == "Pending" or _blocked(s)]
    waits = "; ".join(f"{s.key} {s.message or waiting_message(None)}"
                      for s in sorted(waiting, key=lambda s: s.key))
    if running:
        return "Running", "StagesRunning", \
            f"running {', '.join(running)}" + (f"; {waits}" if waits else "")
    if any(_blocked(s) for s in waiting):
        return "Pending", "PodCreationFailed", waits
    if waiting:
        return "Pending", "WaitingForAdmission", waits
    return "Running", "StagesRunning", "running "


def _pods_created(decision: Decision, status_steps: dict[str, StepStatus], key: str,
                  job: JobView) -> None:
    """A running step's Job that cannot create its Pods keeps running (the Job controller tries
    again, with backoff, and succeeds once the cause is fixed: quota freed, the ServiceAccount
    or Secret created, the namespace's policy met), with the Job controller's words as the
    step's message. Told by an event when it starts and when it ends."""
    step = status_steps[key]
    message = f"{CANNOT_CREATE_PODS}: {job.create_failure}" if job.create_failure else None
    if message == step.message:
        return
    if message and not step.message:
        decision.events.append(Event("Warning", "PodCreationFailed",
                                     f"{key}: its Job {job.name} {message}"))
    elif step.message and not message:
        decision.events.append(Event("Normal", "PodsCreated",
                                     f"{key}: its Job {job.name} created its Pods"))
    status_steps[key] = step.model_copy(update={"message": message})


def _pod_creation_condition(conditions: list[Condition], steps, now: str,
                            generation: int | None) -> list[Condition]:
    """PodCreationFailed: True while some running stage's Job cannot create its Pods; there
    from the first time that happens, False once none is blocked."""
    blocked = sorted((s for s in steps if _blocked(s)), key=lambda s: s.key)
    if blocked:
        return set_condition(conditions, "PodCreationFailed", True, "FailedCreate",
                             "; ".join(f"{s.key}: {s.message}" for s in blocked), now,
                             generation)
    if any(c.type == "PodCreationFailed" for c in conditions):
        return set_condition(conditions, "PodCreationFailed", False, "PodsCreated", "", now,
                             generation)
    return conditions


def _blocked(step: StepStatus) -> bool:
    """A running step carries a message only while its Job cannot create its Pods."""
    return step.phase == "Running" and bool(step.message)


def rejected(decision: Decision, refusals: list[tuple[str, str]], now: str,
             generation: int | None) -> Decision:
    """The decision after the API server refused to create some of its steps' Jobs (or
    Services): those steps fail, and so does the run, until a spec change retries them. The same
    request would be refused at every reconcile."""
    steps = list(decision.status.steps)
    events = list(decision.events)
    for key, why in refusals:
        message = (f"the API server refused its Job: {why}; fix the spec field it comes from "
                   "(spec.scheduling or spec.resources, most often)")
        steps = [s.model_copy(update={"phase": "Failed", "message": message,
                                      "completion_time": now}) if s.key == key else s
                 for s in steps]
        events.append(Event("Warning", "JobRejected", f"{key}: {message}"))
    first_key, _ = refusals[0]
    first = next(s for s in steps if s.key == first_key)
    # StageFailed, as every later decision on this status says (the event says JobRejected).
    status = _finish(decision.status, generation, now, "Failed", "StageFailed",
                     f"stage {first.key} failed: {first.message}", steps=steps,
                     completion_time=now)
    return Decision(status=status, delete=decision.delete, events=events,
                    finished=decision.finished,
                    failed=[*decision.failed, *(s.stage for s in steps if s.key in dict(refusals))],
                    spec=decision.spec, root=decision.root)


def decide(run: dict, jobs: list[JobView], now: str, config: OperatorConfig) -> Decision:
    meta = run["metadata"]
    generation = meta.get("generation")
    prev = CreamRunStatus.model_validate(run.get("status") or {})

    try:
        spec = CreamRunSpec.model_validate(run.get("spec") or {})
    except ValidationError as exc:
        # The API server checks what it can (crd.py); the rest ends here, with the field named.
        message = "invalid spec: " + "; ".join(problems_of(exc, root=("spec",)))
        decision = Decision(_finish(prev, generation, now, "Failed", "InvalidSpec", message))
        if prev.message != message or prev.observed_generation != generation:
            decision.events.append(Event("Warning", "InvalidSpec", message))
        return decision
    refused = policy.refusals(spec, config)
    if refused:
        # Before any Job: the operator would otherwise act with more rights than the run's author.
        message = "not allowed: " + "; ".join(refused)
        decision = Decision(_finish(prev, generation, now, "Failed", "NotAllowed", message))
        if prev.message != message or prev.observed_generation != generation:
            decision.events.append(Event("Warning", "NotAllowed", message))
        return decision
    root = artifact_root(meta, spec, config)
    if root is None:
        message = ("spec.storage.uri is empty and the operator has no default: set "
                   "spec.storage.uri (s3://bucket/prefix) or the chart's storage.uri")
        return Decision(_finish(prev, generation, now, "Failed", "NoStorage", message))

    steps = pipeline.plan(spec, root)
    by_key = {s.key: s for s in steps}
    decision = Decision(status=prev, spec=spec, root=root)
    # A spec change after a failure is the user's fix: retry the failed stages.
    retry = prev.phase == "Failed" and generation != prev.observed_generation
    observed = {j.key: j for j in jobs if j.key in by_key}
    status_steps: dict[str, StepStatus] = {s.key: s for s in prev.steps if s.key in by_key}

    for key, job in observed.items():
        old = status_steps.get(key)
        stage = by_key[key].stage
        # A queued Job's startTime is when it was admitted (the Job controller sets it on resume).
        admitted = (old.admission_time if old else None) or (job.start_time if job.queue else None)
        if old is None and job.state != "suspended" and not (job.state == "failed" and retry):
            # A Job the status does not know: the operator died between creating it and writing
            # the status. Its start is announced now, before whatever else it did meanwhile: once
            # per Job (see Event.job); a queued one's as its admission (which can recur).
            decision.events.append(
                Event("Normal", "StageAdmitted", f"{key} admitted; running ({job.name})")
                if job.queue else
                Event("Normal", "StageStarted", f"{key} started ({job.name})", job=job.name))
        if job.state == "succeeded":
            if old is None or old.phase != "Succeeded":
                start = (old.start_time if old else None) or job.start_time or now
                end = job.completion_time or now
                status_steps[key] = StepStatus(
                    key=key, stage=stage, iteration=by_key[key].iteration, phase="Succeeded",
                    job=job.name, start_time=start, admission_time=admitted, completion_time=end,
                    metrics=job.metrics)
                seconds = _seconds(admitted or start, end)  # the stage's run, not its queueing
                decision.finished.append((stage, seconds))
                decision.events.append(Event("Normal", "StageSucceeded",
                                             f"{key} succeeded in {seconds:.0f}s ({job.name})",
                                             job=job.name))
        elif job.state == "failed":
            if retry:
                decision.delete.append(job.name)
                status_steps.pop(key, None)
                decision.events.append(Event("Normal", "StageRetried",
                                             f"{key}: the spec changed, retrying the stage"))
            elif old is None or old.phase != "Failed":
                status_steps[key] = StepStatus(
                    key=key, stage=stage, iteration=by_key[key].iteration, phase="Failed",
                    job=job.name, start_time=(old.start_time if old else job.start_time),
                    admission_time=admitted, completion_time=job.completion_time or now,
                    message=job.message)
                decision.failed.append(stage)
                decision.events.append(Event("Warning", "StageFailed",
                                             f"{key} failed: {job.message or 'no message'}",
                                             job=job.name))
        elif job.state == "suspended":
            if old is None or old.phase != "Pending":  # new to us, or suspended again (evicted)
                status_steps[key] = StepStatus(
                    key=key, stage=stage, iteration=by_key[key].iteration, phase="Pending",
                    job=job.name, start_time=(old.start_time if old else None) or now,
                    message=waiting_message(job.queue))
                decision.events.append(Event("Normal", "WaitingForAdmission",
                                             f"{key} is {waiting_message(job.queue)} ({job.name})"))
        else:
            if old is None or old.phase == "Pending":
                admitted = (job.start_time or now) if job.queue else None
                status_steps[key] = StepStatus(
                    key=key, stage=stage, iteration=by_key[key].iteration, phase="Running",
                    job=job.name,
                    start_time=(old.start_time if old else None) or job.start_time or now,
                    admission_time=admitted)
                if old is not None:
                    waited = _seconds(old.start_time, admitted)
                    decision.events.append(Event(
                        "Normal", "StageAdmitted",
                        f"{key} admitted after {waited:.0f}s waiting; running ({job.name})"))
            _pods_created(decision, status_steps, key, job)

    # A step recorded as running or failed whose Job is gone (deleted by hand) starts again:
    # its stage is a no-op if it had committed its manifest.
    for key in [k for k, s in status_steps.items() if s.phase != "Succeeded" and k not in observed]:
        if status_steps[key].phase in ("Running", "Pending") or retry:
            del status_steps[key]

    done = {k for k, s in status_steps.items() if s.phase == "Succeeded"}
    running = {k for k, s in status_steps.items() if s.phase in ("Running", "Pending")}
    failed = [s for s in status_steps.values() if s.phase == "Failed"]

    metrics = {k: s.metrics.model_dump() for k, s in status_steps.items()
               if s.phase == "Succeeded" and s.metrics is not None}
    stop = pipeline.early_stop(spec, steps, metrics)
    planned, steps = steps, pipeline.until(steps, stop)  # a step beyond the stop is not started
    results = pipeline.results(steps, metrics, root, spec)
    latest = next((r.consistency_rate for r in reversed(results)
                   if r.consistency_rate is not None), None)
    evaluated = next((r.accuracy for r in reversed(results) if r.accuracy), None)
    now_step = pipeline.current(steps, done)

    if failed:
        first = failed[0]
        phase, reason = "Failed", "StageFailed"
        message = f"stage {first.key} failed: {first.message or 'no message'}"
    elif now_step is None and stop is not None:
        phase, reason = "Succeeded", "EarlyStopped"
        message = f"stopped early by {stop.step}: {stop.reason}"
    elif now_step is None:
        phase, reason, message = "Succeeded", "AllStagesSucceeded", \
            f"{len(spec.rounds())} iteration(s) done"
    elif spec.suspend:
        phase, reason = "Suspended", "Suspended"
        message = ("suspended before the next stage" if not running else
                   f"suspending: waiting for {', '.join(sorted(running))} to finish")
    else:
        queue = spec.scheduling.queue_name
        for step in pipeline.runnable(steps, done, running):
            name = job_name(meta["name"], meta["uid"], step)
            decision.create.append(step)
            if queue:  # created suspended: it runs when Kueue admits it
                status_steps[step.key] = StepStatus(
                    key=step.key, stage=step.stage, iteration=step.iteration, phase="Pending",
                    job=name, start_time=now, message=waiting_message(queue))
                decision.events.append(Event("Normal", "WaitingForAdmission",
                                             f"{step.key} is {waiting_message(queue)} ({name})"))
            else:
                status_steps[step.key] = StepStatus(
                    key=step.key, stage=step.stage, iteration=step.iteration, phase="Running",
                    job=name, start_time=now)
                decision.events.append(Event("Normal", "StageStarted",
                                             f"{step.key} started ({name})", job=name))
        phase, reason, message = _in_flight(status_steps.values())

    ordered = [status_steps[s.key] for s in planned if s.key in status_steps]
    if phase in ("Succeeded", "Failed"):
        completion = prev.completion_time if prev.phase == phase and prev.completion_time else now
    else:
        completion = None
    decision.status = _finish(
        prev, generation, now, phase, reason, message,
        iteration=now_step.iteration if now_step else steps[-1].iteration if stop
        else len(spec.rounds()),
        stopped_by=stop.step if stop else None,
        stage=now_step.stage if now_step else None,
        # Rounded for `kubectl get` (results keep full precision).
        consistency_rate=None if latest is None else round(latest, 3),
        accuracy=None if evaluated is None else round(
            sum(evaluated.values()) / len(evaluated), 3),
        artifacts=root,
        completion_time=completion,
        results=results,
        steps=ordered,
    )
    decision.status = decision.status.model_copy(update={"conditions": _pod_creation_condition(
        decision.status.conditions, ordered, now, generation)})
    return decision
