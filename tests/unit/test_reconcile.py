"""Every transition of the reconcile decision, without a cluster."""

import copy
import json
from pathlib import Path

import yaml

from cream_operator.config import OperatorConfig
from cream_operator.observe import parse_metrics
from cream_operator.reconcile import JobView, decide, rejected
from cream_operator.spec import StepMetrics

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny.yaml").read_text())
CONFIG = OperatorConfig(storage_uri="s3://bucket/runs")
NOW = "2026-11-23T10:00:00+00:00"
LATER = "2026-11-23T10:05:00+00:00"


def _run(status=None, generation=1, **spec_changes):
    spec = copy.deepcopy(TINY["spec"])
    spec.update(spec_changes)
    return {"metadata": {"name": "tiny", "namespace": "ml", "uid": "u-1",
                         "generation": generation},
            "spec": spec, "status": status or {}}


def _metrics_for(key: str) -> StepMetrics:
    if key.endswith("consistency"):
        return StepMetrics(consistency_rate=0.75, pairs=12, dropped=1)
    if key.endswith("evaluate"):
        return StepMetrics(accuracy={"arc_easy": 0.5, "gsm8k": 0.25})
    return StepMetrics()


def _simulate(run, fail: str | None = None, max_rounds=60):
    """Drive decide() like the operator would, with every Job finishing at once."""
    jobs: dict[str, JobView] = {}
    created: list[str] = []
    for _ in range(max_rounds):
        d = decide(run, list(jobs.values()), NOW, CONFIG)
        run["status"] = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
        for step in d.create:
            created.append(step.key)
            name = next(s.job for s in d.status.steps if s.key == step.key)
            jobs[step.key] = JobView(name=name, key=step.key, state="active", start_time=NOW)
        if d.status.phase in ("Succeeded", "Failed") and not d.create:
            return d, created
        for key, job in list(jobs.items()):
            if job.state == "active":
                state = "failed" if key == fail else "succeeded"
                jobs[key] = JobView(name=job.name, key=key, state=state, start_time=NOW,
                                    completion_time=LATER, metrics=_metrics_for(key),
                                    message="pairs.jsonl: line 3 is not valid JSON"
                                    if state == "failed" else None)
    raise AssertionError("the run did not finish")


def test_a_new_run_starts_with_sft():
    d = decide(_run(), [], NOW, CONFIG)
    assert [s.key for s in d.create] == ["iter-0/sft"]
    assert d.status.phase == "Running"
    assert (d.status.iteration, d.status.stage) == (0, "sft")
    assert d.status.artifacts == "s3://bucket/runs/ml/tiny/u-1"
    assert d.status.observed_generation == 1
    assert [e.reason for e in d.events] == ["StageStarted"]
    assert d.status.steps[0].phase == "Running" and d.status.steps[0].job.startswith("tiny-")


def test_a_running_job_is_never_created_again():
    first = decide(_run(), [], NOW, CONFIG)
    run = _run(status=first.status.model_dump(mode="json", by_alias=True, exclude_none=True))
    job = JobView(name=first.status.steps[0].job, key="iter-0/sft", state="active")
    again = decide(run, [job], LATER, CONFIG)
    assert again.create == [] and again.events == []
    # The same decision with the Job not yet visible (a lagging watch) does not recreate either:
    # the status says it is running; only a Job gone for good is recreated.


def test_a_whole_run_creates_each_job_once_and_succeeds():
    d, created = _simulate(_run())
    assert d.status.phase == "Succeeded"
    assert len(created) == len(set(created)) == 15
    res = {r.iteration: r for r in d.status.results}
    assert sorted(res) == [0, 1, 2]
    assert res[1].consistency_rate == 0.75 and res[1].pairs == 12 and res[1].dropped == 1
    assert res[2].accuracy == {"arc_easy": 0.5, "gsm8k": 0.25}
    assert res[2].model_uri == "s3://bucket/runs/ml/tiny/u-1/models/M3"
    assert d.status.consistency_rate == 0.75
    assert d.status.completion_time == NOW
    conds = {c.type: c for c in d.status.conditions}
    assert conds["Succeeded"].status == "True" and conds["Progressing"].status == "False"


def test_scores_of_one_iteration_run_in_parallel():
    done = ["iter-0/sft", "iter-0/evaluate", "iter-1/sample"]
    steps = [{"key": k, "stage": k.split("/")[1], "iteration": int(k[5]), "phase": "Succeeded",
              "job": f"j{i}", "metrics": {}} for i, k in enumerate(done)]
    d = decide(_run(status={"phase": "Running", "steps": steps}), [], NOW, CONFIG)
    assert sorted(s.key for s in d.create) == ["iter-1/score-m0", "iter-1/score-m1"]


def test_a_failed_stage_fails_the_run_with_its_reason():
    d, created = _simulate(_run(), fail="iter-1/dpo")
    assert d.status.phase == "Failed"
    assert "iter-1/dpo" not in created[created.index("iter-1/dpo") + 1:]
    failed = {c.type: c for c in d.status.conditions}["Failed"]
    assert failed.status == "True" and failed.reason == "StageFailed"
    assert "iter-1/dpo" in failed.message and "line 3 is not valid JSON" in failed.message
    assert "iter-2/sample" not in created


def test_a_spec_change_after_a_failure_retries_the_stage():
    d, _ = _simulate(_run(), fail="iter-1/consistency")
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    failed_job = next(s.job for s in d.status.steps if s.key == "iter-1/consistency")
    job = JobView(name=failed_job, key="iter-1/consistency", state="failed", message="bad")
    # Same generation: nothing changes.
    same = decide(_run(status=status), [job], LATER, CONFIG)
    assert same.delete == [] and same.create == [] and same.status.phase == "Failed"
    # The user fixed the spec (generation 2): the failed Job goes and the stage runs again.
    fixed = decide(_run(status=status, generation=2), [job], LATER, CONFIG)
    assert fixed.delete == [failed_job]
    assert [s.key for s in fixed.create] == ["iter-1/consistency"]
    assert fixed.status.phase == "Running"


def test_suspend_pauses_before_the_next_stage_and_resumes():
    first = decide(_run(), [], NOW, CONFIG)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    sft = JobView(name=first.status.steps[0].job, key="iter-0/sft", state="active")
    d = decide(_run(status=status, suspend=True, generation=2), [sft], LATER, CONFIG)
    assert d.status.phase == "Suspended" and d.create == []
    assert "waiting for iter-0/sft" in d.status.message
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    done = JobView(name=sft.name, key="iter-0/sft", state="succeeded", completion_time=LATER)
    d = decide(_run(status=status, suspend=True, generation=2), [done], LATER, CONFIG)
    assert d.status.phase == "Suspended" and d.create == []
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    d = decide(_run(status=status, suspend=False, generation=3), [done], LATER, CONFIG)
    assert d.status.phase == "Running"
    assert sorted(s.key for s in d.create) == ["iter-0/evaluate", "iter-1/sample"]


def test_a_job_deleted_while_running_is_recreated():
    first = decide(_run(), [], NOW, CONFIG)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    d = decide(_run(status=status), [], LATER, CONFIG)
    assert [s.key for s in d.create] == ["iter-0/sft"]


def test_finished_steps_survive_their_jobs_ttl():
    d, _ = _simulate(_run())
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = decide(_run(status=status), [], LATER, CONFIG)  # every Job gone
    assert again.status.phase == "Succeeded" and again.create == []
    assert again.status.results == d.status.results


def test_raising_iterations_of_a_finished_run_continues_it():
    d, _ = _simulate(_run())
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    data = {**TINY["spec"]["data"], "prompts": ["builtin://data/prompts-1.jsonl"]}
    more = decide(_run(status=status, generation=2, iterations=3, data=data), [], LATER, CONFIG)
    assert more.status.phase == "Running"
    assert [s.key for s in more.create] == ["iter-3/sample"]


def test_conditions_keep_their_transition_time():
    first = decide(_run(), [], NOW, CONFIG)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    sft = JobView(name=first.status.steps[0].job, key="iter-0/sft", state="active")
    again = decide(_run(status=status), [sft], LATER, CONFIG)
    prog = {c.type: c for c in again.status.conditions}["Progressing"]
    assert prog.status == "True" and prog.last_transition_time == NOW


def test_invalid_spec_and_missing_storage_fail_with_a_reason():
    run = _run()
    run["spec"]["sampling"]["responsesPerPrompt"] = 1
    d = decide(run, [], NOW, CONFIG)
    assert d.status.phase == "Failed" and d.create == []
    failed = {c.type: c for c in d.status.conditions}["Failed"]
    assert failed.reason == "InvalidSpec" and "sampling.responsesPerPrompt" in failed.message

    d = decide(_run(), [], NOW, OperatorConfig(storage_uri=""))
    failed = {c.type: c for c in d.status.conditions}["Failed"]
    assert failed.reason == "NoStorage" and "spec.storage.uri" in failed.message


def test_finished_stage_durations_are_reported_once():
    first = decide(_run(), [], NOW, CONFIG)
    status = first.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    done = JobView(name=first.status.steps[0].job, key="iter-0/sft", state="succeeded",
                   start_time=NOW, completion_time=LATER)
    d = decide(_run(status=status), [done], LATER, CONFIG)
    assert d.finished == [("sft", 300.0)]
    status = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert decide(_run(status=status), [done], LATER, CONFIG).finished == []


def test_parse_metrics_of_a_termination_message():
    msg = json.dumps({"stage": "consistency", "metrics": {"consistency_rate": 0.6, "pairs": 3,
                                                           "dropped": 0, "method": "kendall"}})
    assert parse_metrics(msg) == StepMetrics(consistency_rate=0.6, pairs=3, dropped=0)
    assert parse_metrics("Traceback (most recent call last)") is None
    assert parse_metrics(None) is None


# --- a Kueue queue: Jobs are created suspended and run once admitted ---------------------------

ADMITTED = "2026-11-23T10:02:00+00:00"
QUEUED = {"queueName": "gpu"}


def _dump(decision) -> dict:
    return decision.status.model_dump(mode="json", by_alias=True, exclude_none=True)


def test_a_queued_stage_waits_for_admission_then_runs():
    created = decide(_run(scheduling=QUEUED), [], NOW, CONFIG)
    assert [s.key for s in created.create] == ["iter-0/sft"]
    step = created.status.steps[0]
    assert step.phase == "Pending" and step.admission_time is None
    assert step.message == "waiting for admission by Kueue LocalQueue gpu"
    assert [e.reason for e in created.events] == ["WaitingForAdmission"]
    assert created.events[0].message.startswith(
        "iter-0/sft is waiting for admission by Kueue LocalQueue gpu (tiny-")
    # Nothing of the run runs: it is Pending and says why, never "running".
    assert created.status.phase == "Pending"
    assert created.status.message == "iter-0/sft waiting for admission by Kueue LocalQueue gpu"
    prog = {c.type: c for c in created.status.conditions}["Progressing"]
    assert (prog.status, prog.reason) == ("False", "WaitingForAdmission")

    suspended = JobView(name=step.job, key="iter-0/sft", state="suspended", queue="gpu")
    still = decide(_run(status=_dump(created), scheduling=QUEUED), [suspended], LATER, CONFIG)
    assert still.create == [] and still.events == []
    assert still.status.steps == created.status.steps and still.status.phase == "Pending"

    # Kueue clears suspend; the Job controller sets startTime: that is the admission time.
    active = JobView(name=step.job, key="iter-0/sft", state="active", queue="gpu",
                     start_time=ADMITTED)
    running = decide(_run(status=_dump(still), scheduling=QUEUED), [active], LATER, CONFIG)
    step = running.status.steps[0]
    assert (step.phase, step.start_time, step.admission_time) == ("Running", NOW, ADMITTED)
    assert step.message is None
    assert running.status.phase == "Running" and running.status.message == "running iter-0/sft"
    assert [e.reason for e in running.events] == ["StageAdmitted"]
    assert "admitted after 120s waiting" in running.events[0].message

    # Its duration is its run from admission, not its time in the queue.
    done = JobView(name=step.job, key="iter-0/sft", state="succeeded", queue="gpu",
                   start_time=ADMITTED, completion_time=LATER)
    finished = decide(_run(status=_dump(running), scheduling=QUEUED), [done], LATER, CONFIG)
    assert finished.finished == [("sft", 180.0)]
    assert finished.status.steps[0].admission_time == ADMITTED
    assert all(s.phase == "Pending" for s in finished.status.steps[1:])


def test_a_stage_admitted_and_finished_between_two_reconciles_keeps_its_admission_time():
    created = decide(_run(scheduling=QUEUED), [], NOW, CONFIG)
    done = JobView(name=created.status.steps[0].job, key="iter-0/sft", state="succeeded",
                   queue="gpu", start_time=ADMITTED, completion_time=LATER)
    d = decide(_run(status=_dump(created), scheduling=QUEUED), [done], LATER, CONFIG)
    assert d.status.steps[0].admission_time == ADMITTED and d.finished == [("sft", 180.0)]


def test_one_stage_running_and_one_waiting_are_told_apart():
    done = ["iter-0/sft", "iter-0/evaluate", "iter-1/sample"]
    steps = [{"key": k, "stage": k.split("/")[1], "iteration": int(k[5]), "phase": "Succeeded",
              "job": f"j{i}", "metrics": {}} for i, k in enumerate(done)]
    d = decide(_run(status={"phase": "Running", "steps": steps}, scheduling=QUEUED), [], NOW,
               CONFIG)
    names = {s.key: s.job for s in d.status.steps}
    jobs = [JobView(name=names["iter-1/score-m0"], key="iter-1/score-m0", state="active",
                    queue="gpu", start_time=ADMITTED),
            JobView(name=names["iter-1/score-m1"], key="iter-1/score-m1", state="suspended",
                    queue="gpu")]
    d = decide(_run(status=_dump(d), scheduling=QUEUED), jobs, LATER, CONFIG)
    assert d.status.phase == "Running"
    assert d.status.message == ("running iter-1/score-m0; iter-1/score-m1 waiting for admission "
                                "by Kueue LocalQueue gpu")
    phases = {s.key: s.phase for s in d.status.steps}
    assert phases["iter-1/score-m0"] == "Running" and phases["iter-1/score-m1"] == "Pending"
    assert d.create == []  # a waiting stage is in flight: never created twice


def test_a_running_stage_suspended_again_waits_for_admission_again():
    created = decide(_run(scheduling=QUEUED), [], NOW, CONFIG)
    name = created.status.steps[0].job
    active = JobView(name=name, key="iter-0/sft", state="active", queue="gpu",
                     start_time=ADMITTED)
    running = decide(_run(status=_dump(created), scheduling=QUEUED), [active], LATER, CONFIG)
    # Kueue evicts it (preemption): the Job is suspended and its Pods go.
    evicted = JobView(name=name, key="iter-0/sft", state="suspended", queue="gpu")
    d = decide(_run(status=_dump(running), scheduling=QUEUED), [evicted], LATER, CONFIG)
    step = d.status.steps[0]
    assert (step.phase, step.admission_time, step.start_time) == ("Pending", None, NOW)
    assert [e.reason for e in d.events] == ["WaitingForAdmission"]
    assert d.status.phase == "Pending" and d.create == []


def test_a_waiting_stage_whose_job_is_gone_is_created_again():
    created = decide(_run(scheduling=QUEUED), [], NOW, CONFIG)
    d = decide(_run(status=_dump(created), scheduling=QUEUED), [], LATER, CONFIG)
    assert [s.key for s in d.create] == ["iter-0/sft"]


def test_an_invalid_spec_fails_naming_the_field_with_one_event():
    run = _run(evaluation={"tasks": [{"name": "a", "uri": "s3://cream-data/a.jsonl",
                                      "format": "gsm8k"}] * 2})
    d = decide(run, [], NOW, CONFIG)
    assert d.status.phase == "Failed" and d.create == []
    assert "spec.evaluation" in d.status.message and "repeated: a" in d.status.message
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "InvalidSpec")]
    run["status"] = d.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    again = decide(run, [], LATER, CONFIG)
    assert again.status.phase == "Failed" and again.events == []  # said once, not every pass


def test_a_job_the_api_server_refuses_fails_its_step_and_the_run_until_the_spec_changes():
    first = decide(_run(), [], NOW, CONFIG)
    [step] = first.create
    refused = rejected(first, [(step.key, "spec.template.spec.nodeSelector: Invalid value")],
                       NOW, 1)
    assert refused.status.phase == "Failed"
    failed = {c.type: c for c in refused.status.conditions}["Failed"]
    assert failed.status == "True" and failed.reason == "StageFailed"
    assert "refused its Job" in failed.message
    assert "nodeSelector" in failed.message and "spec.scheduling" in failed.message
    assert [e.reason for e in refused.events][-1] == "JobRejected"
    assert refused.failed == ["sft"]
    status = refused.status.model_dump(mode="json", by_alias=True, exclude_none=True)
    # The same spec is not tried again (the API server would refuse it again)...
    again = decide(_run(status=status), [], LATER, CONFIG)
    assert again.status.phase == "Failed" and again.create == []
    # ...a changed one is.
    fixed = decide(_run(status=status, generation=2), [], LATER, CONFIG)
    assert [s.key for s in fixed.create] == [step.key]


# -- crash recovery of events: a kill between creating a Job and writing the status --------------

def _started(decision) -> list:
    return [e for e in decision.events if e.reason == "StageStarted"]


def test_a_job_the_status_does_not_know_is_announced_as_started_once_per_job():
    first = decide(_run(), [], NOW, CONFIG)
    name = first.status.steps[0].job
    # The operator created the Job, then died before the status write: the status is empty.
    job = JobView(name=name, key="iter-0/sft", state="active", start_time=NOW)
    restarted = decide(_run(), [job], LATER, CONFIG)
    assert restarted.create == []
    assert restarted.status.steps[0].phase == "Running"
    # The same event, of the same Job, as the decision that created it: the controller names
    # both after the Job's uid, so the API server keeps one.
    assert _started(restarted) == _started(first)
    assert _started(first)[0].job == name
    # Once the status knows the Job, nothing more is announced.
    again = decide(_run(status=_dump(restarted)), [job], LATER, CONFIG)
    assert again.events == []


def test_a_job_that_ended_while_the_status_did_not_know_it_was_announced_first():
    first = decide(_run(), [], NOW, CONFIG)
    name = first.status.steps[0].job
    for state, reason in (("succeeded", "StageSucceeded"), ("failed", "StageFailed")):
        job = JobView(name=name, key="iter-0/sft", state=state, start_time=NOW,
                      completion_time=LATER, metrics=StepMetrics() if state == "succeeded"
                      else None, message=None if state == "succeeded" else "boom")
        d = decide(_run(), [job], LATER, CONFIG)
        assert [(e.reason, e.job) for e in d.events][:2] == [("StageStarted", name),
                                                             (reason, name)]


def test_events_a_job_can_have_more_than_once_are_not_tied_to_it():
    """Waiting for admission recurs after an eviction: those events are never deduplicated."""
    created = decide(_run(scheduling=QUEUED), [], NOW, CONFIG)
    assert [(e.reason, e.job) for e in created.events] == [("WaitingForAdmission", None)]
    name = created.status.steps[0].job
    # A queued Job found suspended with no status (a crash) announces no start: it has not.
    waiting = JobView(name=name, key="iter-0/sft", state="suspended", queue="gpu")
    d = decide(_run(scheduling=QUEUED), [waiting], LATER, CONFIG)
    assert [e.reason for e in d.events] == ["WaitingForAdmission"]
    # Found running: admitted while the operator was down. A queued stage's start is its
    # admission, never a StageStarted.
    active = JobView(name=name, key="iter-0/sft", state="active", queue="gpu",
                     start_time=ADMITTED)
    d = decide(_run(scheduling=QUEUED), [active], LATER, CONFIG)
    assert [(e.reason, e.job) for e in d.events] == [("StageAdmitted", None)]


NO_SA = ('Error creating: pods "tiny-x" is forbidden: error looking up service account '
         'ml/trainer: serviceaccount "trainer" not found')


def test_a_stage_whose_pods_cannot_be_created_says_why_and_recovers_by_itself():
    created = decide(_run(), [], NOW, CONFIG)
    name = created.status.steps[0].job
    blocked = JobView(name=name, key="iter-0/sft", state="active", start_time=NOW,
                      create_failure=NO_SA)
    d = decide(_run(status=_dump(created)), [blocked], LATER, CONFIG)
    step = d.status.steps[0]
    # Still the Job's step (the Job controller keeps trying), with its words as the reason.
    assert (step.phase, step.job) == ("Running", name) and d.create == []
    assert step.message == f"cannot create its Pods: {NO_SA}"
    # Nothing runs: the run is Pending, not progressing, and a condition says why.
    assert d.status.phase == "Pending"
    assert d.status.message == f"iter-0/sft cannot create its Pods: {NO_SA}"
    conds = {c.type: c for c in d.status.conditions}
    assert (conds["Progressing"].status, conds["Progressing"].reason) == \
        ("False", "PodCreationFailed")
    failing = conds["PodCreationFailed"]
    assert (failing.status, failing.reason) == ("True", "FailedCreate")
    assert failing.message == f"iter-0/sft: cannot create its Pods: {NO_SA}"
    assert [(e.type, e.reason) for e in d.events] == [("Warning", "PodCreationFailed")]
    assert d.events[0].message == f"iter-0/sft: its Job {name} cannot create its Pods: {NO_SA}"

    # The Job controller's next try fails again, in other words: the status follows, no event.
    again = JobView(name=name, key="iter-0/sft", state="active", start_time=NOW,
                    create_failure="exceeded quota: pods")
    d2 = decide(_run(status=_dump(d)), [again], LATER, CONFIG)
    assert d2.events == [] and "exceeded quota" in d2.status.steps[0].message
    assert d2.status.phase == "Pending"

    # The ServiceAccount is created; the Job's Pod with it: Running, and the condition False.
    running = JobView(name=name, key="iter-0/sft", state="active", start_time=NOW)
    d3 = decide(_run(status=_dump(d2)), [running], LATER, CONFIG)
    assert d3.status.steps[0].message is None
    assert (d3.status.phase, d3.status.message) == ("Running", "running iter-0/sft")
    conds = {c.type: c for c in d3.status.conditions}
    assert (conds["PodCreationFailed"].status, conds["PodCreationFailed"].reason) == \
        ("False", "PodsCreated")
    assert conds["Progressing"].status == "True"
    assert [(e.type, e.reason) for e in d3.events] == [("Normal", "PodsCreated")]
    # A run that never had the problem has no such condition.
    assert "PodCreationFailed" not in {c.type for c in created.status.conditions}


def test_one_stage_blocked_beside_one_running_keeps_the_run_running_and_says_so():
    done = ["iter-0/sft", "iter-0/evaluate", "iter-1/sample"]
    steps = [{"key": k, "stage": k.split("/")[1], "iteration": int(k[5]), "phase": "Succeeded",
              "job": f"j{i}", "metrics": {}} for i, k in enumerate(done)]
    d = decide(_run(status={"phase": "Running", "steps": steps}), [], NOW, CONFIG)
    names = {s.key: s.job for s in d.status.steps}
    jobs = [JobView(name=names["iter-1/score-m0"], key="iter-1/score-m0", state="active"),
            JobView(name=names["iter-1/score-m1"], key="iter-1/score-m1", state="active",
                    create_failure="exceeded quota: pods")]
    d = decide(_run(status=_dump(d)), jobs, LATER, CONFIG)
    assert d.status.phase == "Running"
    assert d.status.message == ("running iter-1/score-m0; iter-1/score-m1 cannot create its "
                                "Pods: exceeded quota: pods")
    conds = {c.type: c for c in d.status.conditions}
    assert conds["PodCreationFailed"].status == "True"
    assert conds["PodCreationFailed"].message.startswith("iter-1/score-m1: ")


def test_early_stopping_ends_the_run_saying_which_step_stopped_it_and_why():
    prompts = {**TINY["spec"]["data"], "prompts": TINY["spec"]["data"]["prompts"][:1]}
    # Every iteration's consistency rate is 0.75 (_metrics_for): iteration 2 does not improve
    # on iteration 1's by 0.01, so iteration 3 never starts.
    run = _run(iterations=3, data=prompts,
               earlyStopping={"metric": "consistencyRate", "minDelta": 0.01})
    d, created = _simulate(run)
    assert d.status.phase == "Succeeded"
    assert d.status.stopped_by == "iter-2/consistency"
    assert "stopped early by iter-2/consistency" in d.status.message
    assert "did not improve on the best 0.75 by 0.01" in d.status.message
    succeeded = next(c for c in d.status.conditions if c.type == "Succeeded")
    assert (succeeded.status, succeeded.reason) == ("True", "EarlyStopped")
    assert not [k for k in created if k.startswith("iter-3/")]
    assert "iter-2/evaluate" in created  # the stopping iteration finishes
    assert [r.iteration for r in d.status.results] == [0, 1, 2]
    assert d.status.iteration == 2


def test_without_early_stopping_the_same_run_does_every_iteration():
    prompts = {**TINY["spec"]["data"], "prompts": TINY["spec"]["data"]["prompts"][:1]}
    d, created = _simulate(_run(iterations=3, data=prompts))
    assert d.status.stopped_by is None and "iter-3/dpo" in created
