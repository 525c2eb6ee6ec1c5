"""The operator's copy of what its watches delivered (cache.WatchCache): which copy of a run a
reconcile reads, and the Jobs it sees."""

import json

from cream_operator.cache import JOB_UID_LABEL, WatchCache, job_projection
from cream_operator.jobs import ANNOTATION_STEP, KUEUE_QUEUE, LABEL_RUN, LABEL_RUN_UID
from cream_operator.observe import has_ended_pod, job_view


def _run(rv: str, phase: str = "Running") -> dict:
    return {"metadata": {"namespace": "ml", "name": "tiny", "uid": "run-1",
                         "resourceVersion": rv},
            "status": {"phase": phase}}


def _job(name: str, uid: str, complete: bool = False, run_uid: str = "run-1") -> dict:
    conditions = [{"type": "Complete", "status": "True"}] if complete else []
    return {"metadata": {"name": name, "namespace": "ml", "uid": uid,
                         "labels": {LABEL_RUN_UID: run_uid, "other": "x"},
                         "annotations": {ANNOTATION_STEP: "iter-1/dpo"},
                         "managedFields": [{"big": "x" * 1000}]},
            "spec": {"suspend": False, "template": {"spec": {"containers": []}}},
            "status": {"startTime": "2026-11-23T10:00:00Z", "active": 0 if complete else 1,
                       "conditions": conditions}}


def _pod(name: str, job_uid: str, phase: str = "Succeeded", message: str | None = None) -> dict:
    state = ({"terminated": {"exitCode": 0, "message": message}} if phase == "Succeeded"
             else {"running": {}})
    return {"metadata": {"name": name, "uid": f"uid-{name}",
                         "creationTimestamp": "2026-11-23T10:00:00Z",
                         "labels": {JOB_UID_LABEL: job_uid, "job-name": "a"}},
            "spec": {"containers": [{"name": "stage", "image": "x"}]},
            "status": {"phase": phase, "containerStatuses": [{"name": "stage", "state": state}]}}


def test_reads_follow_the_watch():
    cache = WatchCache()
    assert cache.run("ml", "tiny") is None
    cache.run_seen(_run("1"))
    cache.run_seen(_run("2", "Succeeded"))
    assert cache.run("ml", "tiny")["status"]["phase"] == "Succeeded"


def test_our_write_is_read_until_the_watch_delivers_it():
    cache = WatchCache()
    cache.run_seen(_run("1"))
    cache.run_fresh(_run("5", "Succeeded"))  # the response of our status patch
    # An event that was on its way before our write is older: the write's copy stays.
    cache.run_seen(_run("3"))
    assert cache.run("ml", "tiny")["metadata"]["resourceVersion"] == "5"
    # The watch delivers our write; from then on the watch is read again.
    cache.run_seen(_run("5", "Succeeded"))
    cache.run_seen(_run("7", "Failed"))
    assert cache.run("ml", "tiny")["metadata"]["resourceVersion"] == "7"


def test_a_copy_the_watch_already_delivered_is_not_held_over_newer_events():
    cache = WatchCache()
    cache.run_seen(_run("5"))
    cache.run_seen(_run("6"))
    cache.run_fresh(_run("5"))  # e.g. a GET that raced with the watch
    assert cache.run("ml", "tiny")["metadata"]["resourceVersion"] == "6"


def test_a_refused_copy_is_dropped():
    cache = WatchCache()
    cache.run_seen(_run("1"))
    cache.run_fresh(_run("5"))
    cache.run_stale("ml", "tiny")
    assert cache.run("ml", "tiny")["metadata"]["resourceVersion"] == "1"


def test_jobs_by_run_keep_what_the_decision_reads():
    cache = WatchCache()
    cache.job_seen(_job("a", "u-a"))
    cache.job_seen(_job("b", "u-b", complete=True))
    cache.job_seen(_job("c", "u-c", run_uid="run-2"))
    held = {j["metadata"]["name"]: j for j in cache.jobs("run-1")}
    assert set(held) == {"a", "b"}
    assert "managedFields" not in held["a"]["metadata"]
    assert "template" not in held["a"]["spec"]
    # The projection tells the decision the same as the whole Job.
    assert job_view(held["b"], []) == job_view(_job("b", "u-b", complete=True), [])
    assert job_projection(_job("a", "u-a"))["metadata"]["uid"] == "u-a"


def test_a_queued_jobs_projection_tells_waiting_and_admission_as_the_whole_job():
    # Created suspended in a Kueue LocalQueue: the decision must see "suspended" and the queue.
    waiting = _job("q", "u-q")
    waiting["metadata"]["labels"][KUEUE_QUEUE] = "gpu-queue"
    waiting["spec"]["suspend"] = True
    waiting["status"] = {}
    # Admitted: Kueue resumed it and the Job controller set its startTime.
    admitted = json.loads(json.dumps(waiting))
    admitted["spec"]["suspend"] = False
    admitted["status"] = {"startTime": "2026-11-23T10:05:00Z", "active": 1}
    for job in (waiting, admitted):
        cache = WatchCache()
        cache.job_seen(job)
        [held] = cache.jobs("run-1")
        assert job_view(held, []) == job_view(job, [])
    assert job_view(job_projection(waiting), []).state == "suspended"
    assert job_view(job_projection(waiting), []).queue == "gpu-queue"
    assert job_view(job_projection(admitted), []).start_time == "2026-11-23T10:05:00Z"


def test_a_deleted_job_goes_but_not_its_successor_of_the_same_name():
    cache = WatchCache()
    cache.job_seen(_job("a", "old"))
    cache.pod_seen(_pod("p-old", "old"))
    cache.job_seen(_job("a", "new"))  # a retried stage's new Job, seen before the old one's DELETE
    cache.job_gone(_job("a", "old"))
    assert [j["metadata"]["uid"] for j in cache.jobs("run-1")] == ["new"]
    assert cache.pods("old") == []
    cache.job_gone(_job("a", "new"))
    assert cache.jobs("run-1") == []


def test_a_fresh_list_replaces_a_runs_jobs_and_a_gone_run_takes_them_along():
    cache = WatchCache()
    cache.run_seen(_run("1"))
    cache.job_seen(_job("a", "u-a"))
    cache.replace_jobs("run-1", [_job("b", "u-b")])
    assert [j["metadata"]["name"] for j in cache.jobs("run-1")] == ["b"]
    cache.pod_seen(_pod("p-b", "u-b"))
    cache.run_gone("ml", "tiny")
    assert cache.run("ml", "tiny") is None
    assert cache.jobs("run-1") == [] and cache.pods("u-b") == []


def test_a_job_we_deleted_stays_gone_until_its_deleted_event():
    cache = WatchCache()
    cache.job_seen(_job("a", "old"))
    cache.job_gone(_job("a", "old"), deleted_by_us=True)
    cache.job_seen(_job("a", "old"))  # an older event of it, still on its way
    assert cache.jobs("run-1") == []
    cache.job_seen(_job("a", "new"))  # the retried stage's Job of the same name counts
    cache.job_gone(_job("a", "old"))  # its DELETED event
    assert [j["metadata"]["uid"] for j in cache.jobs("run-1")] == ["new"]


def test_a_finished_jobs_metrics_come_from_its_pod_in_the_cache():
    cache = WatchCache()
    job = _job("b", "u-b", complete=True)
    cache.job_seen(job)
    cache.pod_seen(_pod("p1", "u-b", phase="Running"))
    assert not has_ended_pod(job, cache.pods("u-b"))  # the Pod's end has not come yet: list
    msg = json.dumps({"stage": "dpo", "metrics": {"pairs": 7}})
    cache.pod_seen(_pod("p1", "u-b", message=msg))
    assert has_ended_pod(job, cache.pods("u-b"))
    assert job_view(cache.jobs("run-1")[0], cache.pods("u-b")).metrics.pairs == 7
    assert has_ended_pod(_job("a", "u-a"), [])  # an active Job needs no Pod
    cache.pod_gone(_pod("p1", "u-b"))
    assert cache.pods("u-b") == []
    cache.replace_pods("u-b", [_pod("p2", "u-b", message=msg)])
    assert [p["metadata"]["name"] for p in cache.pods("u-b")] == ["p2"]


def test_a_jobs_failed_create_events_are_kept_by_job_and_name_its_run():
    cache = WatchCache()
    event = {"metadata": {"name": "a.17f"}, "involvedObject": {"kind": "Job", "uid": "u-a"},
             "reason": "FailedCreate", "message": "quota", "lastTimestamp": "2026-11-23T10:00:01Z"}
    # Before its Job is known (a restart delivered the Event first): kept, no run to reconcile.
    assert cache.create_failure_seen(event) is None
    assert cache.create_failures("u-a") == [("2026-11-23T10:00:01Z", "quota")]
    job = _job("a", "u-a")
    job["metadata"]["labels"][LABEL_RUN] = "tiny"
    cache.job_seen(job)
    again = {**event, "lastTimestamp": "2026-11-23T10:00:05Z"}  # the same Event, repeated
    assert cache.create_failure_seen(again) == ("ml", "tiny")
    assert cache.create_failures("u-a") == [("2026-11-23T10:00:05Z", "quota")]
    cache.create_failure_gone(event)  # its TTL ran out
    assert cache.create_failures("u-a") == []
    cache.create_failure_seen(event)
    cache.job_gone(job)
    assert cache.create_failures("u-a") == []
