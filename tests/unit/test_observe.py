"""Reading a Job's outcome and a stage's metrics from the Job and its Pods."""

import json

from cream_operator.jobs import ANNOTATION_STEP
from cream_operator.observe import creation_failure, failure_of_event, job_state, job_view


def _job(conditions=(), suspend=False, active=0):
    meta = {"name": "tiny-ab12c-1-dpo", "annotations": {ANNOTATION_STEP: "iter-1/dpo"}}
    return {"metadata": meta,
            "spec": {"suspend": suspend},
            "status": {"startTime": "2026-11-23T10:00:00Z", "active": active,
                       "completionTime": "2026-11-23T10:01:00Z" if ("Complete", "True") in
                       [(c["type"], c["status"]) for c in conditions] else None,
                       "conditions": list(conditions)}}


def _pod(phase, message=None, exit_code=0, created="2026-11-23T10:00:00Z"):
    term = {"exitCode": exit_code, **({"message": message} if message else {})}
    return {"metadata": {"creationTimestamp": created},
            "status": {"phase": phase, "containerStatuses": [{"state": {"terminated": term}}]}}


def test_states():
    assert job_state(_job(active=1)) == "active"
    assert job_state(_job([{"type": "Complete", "status": "True"}])) == "succeeded"
    assert job_state(_job([{"type": "Failed", "status": "True"}])) == "failed"
    assert job_state(_job(suspend=True)) == "suspended"


def test_a_succeeded_stage_reports_its_metrics():
    msg = json.dumps({"stage": "dpo", "metrics": {"pairs": 7, "loss_first": 0.69}})
    view = job_view(_job([{"type": "Complete", "status": "True"}]), [_pod("Succeeded", msg)])
    assert view.state == "succeeded" and view.key == "iter-1/dpo"
    assert view.metrics.pairs == 7
    assert view.completion_time == "2026-11-23T10:01:00Z"


def test_a_several_node_stage_reports_node_0s_metrics_whichever_pod_is_newest():
    """Only node 0 of an Indexed Job writes the termination message; the others end silent."""
    msg = json.dumps({"stage": "evaluate", "metrics": {"accuracy": {"gsm8k": 0.5}}})
    pods = [_pod("Succeeded", msg, created="2026-11-23T10:00:00Z"),
            _pod("Succeeded", None, created="2026-11-23T10:00:01Z")]
    for order in (pods, pods[::-1]):
        view = job_view(_job([{"type": "Complete", "status": "True"}]), order)
        assert view.metrics.accuracy == {"gsm8k": 0.5}


def test_a_failed_stage_reports_its_own_words_from_the_newest_pod():
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
              "message": "Job has reached the specified backoff limit",
              "lastTransitionTime": "2026-11-23T10:02:00Z"}
    pods = [_pod("Failed", "old attempt", 1, "2026-11-23T10:00:00Z"),
            _pod("Failed", "pairs.jsonl: line 3 is not valid JSON", 2, "2026-11-23T10:01:00Z")]
    view = job_view(_job([failed]), pods)
    assert view.state == "failed"
    assert view.message == "pairs.jsonl: line 3 is not valid JSON (exit code 2)"
    assert view.completion_time == "2026-11-23T10:02:00Z"
    # Without a termination message, the Job controller's reason.
    view = job_view(_job([failed]), [])
    assert view.message.startswith("BackoffLimitExceeded: Job has reached")


def test_a_queued_job_names_its_queue():
    job = _job(suspend=True)
    job["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "gpu"}
    view = job_view(job, [])
    assert (view.state, view.queue) == ("suspended", "gpu")
    assert job_view(_job(active=1), []).queue is None


def _waiting_job(active=0, parallelism=None):
    job = _job(active=active)
    if parallelism:
        job["spec"]["parallelism"] = parallelism
    return job


FORBIDDEN = ('Error creating: pods "tiny-ab12c-1-dpo-x7k2p" is forbidden: error looking up '
             'service account ml/trainer: serviceaccount "trainer" not found')


def test_a_job_that_cannot_create_its_pods_says_why_until_one_is_made():
    event = {"metadata": {"name": "tiny-ab12c-1-dpo.1"}, "reason": "FailedCreate",
             "message": FORBIDDEN, "firstTimestamp": "2026-11-23T10:00:01Z",
             "lastTimestamp": "2026-11-23T10:00:09Z"}
    failure = failure_of_event(event)
    assert failure == ("2026-11-23T10:00:09Z", FORBIDDEN)
    assert job_view(_waiting_job(), [], [failure]).create_failure == FORBIDDEN
    # A Pod made after the last failure: creating works again (the ServiceAccount exists now).
    later = _pod("Running", created="2026-11-23T10:00:30Z")
    assert creation_failure(_waiting_job(), [later], [failure]) is None
    # A Pod older than the failure (a retry after a crash cannot be created): still blocked.
    earlier = _pod("Failed", created="2026-11-23T09:59:00Z")
    assert creation_failure(_waiting_job(), [earlier], [failure]) == FORBIDDEN
    # As many Pods as it wants, or finished, or no failure at all: nothing to say.
    assert creation_failure(_waiting_job(active=1), [], [failure]) is None
    assert creation_failure(_job([{"type": "Complete", "status": "True"}]), [], [failure]) \
        is None
    assert creation_failure(_waiting_job(), [], []) is None
    # An Indexed Job of two Pods with one made: the other cannot be.
    assert creation_failure(_waiting_job(active=1, parallelism=2), [earlier], [failure]) \
        == FORBIDDEN


def test_the_newest_failure_counts_whatever_recorder_posted_it():
    old = failure_of_event({"metadata": {"name": "a"}, "message": "quota exceeded",
                            "lastTimestamp": "2026-11-23T10:00:01Z"})
    # events.k8s.io recorders leave lastTimestamp empty: their series says when.
    new = failure_of_event({"metadata": {"name": "b"}, "message": "violates PodSecurity",
                            "eventTime": "2026-11-23T10:00:02.000000Z",
                            "series": {"count": 3,
                                       "lastObservedTime": "2026-11-23T10:00:20.123456Z"}})
    assert new == ("2026-11-23T10:00:20.123456Z", "violates PodSecurity")
    pod = _pod("Failed", created="2026-11-23T10:00:10Z")
    assert creation_failure(_waiting_job(), [pod], [old, new]) == "violates PodSecurity"
    assert creation_failure(_waiting_job(), [pod], [old]) is None
