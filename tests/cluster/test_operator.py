"""The operator on the real control plane: a tiny CreamRun end to end, failures, restarts,
suspend and delete. Stage Pods run the real stage code through the local node agent; artifacts go
to the real S3 server."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from operator_process import JobCreations, OperatorProcess

from cream_operator import jobs, pipeline, specfile
from cream_operator.config import OperatorConfig
from cream_operator.reconcile import artifact_root
from cream_operator.spec import GROUP, PLURAL, VERSION, CreamRunSpec
from cream_stages.contract import MANIFEST
from kubeharness.process import free_port

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "examples" / "tiny.yaml"
RUN_TIMEOUT = 1500  # the tiny run's 15 stages on 2 CPU cores, with margin


@pytest.fixture(scope="session")
def crd(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{PLURAL}.{GROUP}")
    return f"{PLURAL}.{GROUP}"


RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}


@pytest.fixture
def namespace(namespace_factory, k8s_api):
    """Every run here is in a namespace enforcing the Pod Security Standard `restricted`, as
    shared GPU clusters' often are: a stage or cleanup Pod that did not meet it would never be
    created. Checked live: the API server refuses a Pod that does not meet it."""
    name = namespace_factory()
    core = client.CoreV1Api(k8s_api)
    core.patch_namespace(name, {"metadata": {"labels": RESTRICTED}})
    plain = {"metadata": {"name": "plain"},
             "spec": {"containers": [{"name": "c", "image": "x", "command": ["true"]}]}}
    with pytest.raises(client.ApiException) as refused:
        core.create_namespaced_pod(name, plain, dry_run="All")
    assert refused.value.status == 403 and "violates PodSecurity" in refused.value.body
    yield name
    with contextlib.suppress(client.ApiException):
        namespace_factory.delete(name)


@pytest.fixture
def bucket(s3):
    return s3.make_bucket()


@pytest.fixture
def s3_secret(k8s_api, namespace, s3):
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "cream-s3"}, "stringData": s3.env()})
    return "cream-s3"


@pytest.fixture
def operator(crd, kube_env, namespace, bucket, s3_secret, tmp_path):
    op = OperatorProcess(kube_env, namespace, tmp_path, f"s3://{bucket}/runs").start()
    yield op
    op.stop()


@pytest.fixture
def creations(k8s_api, namespace):
    watcher = JobCreations(k8s_api, namespace).start()
    yield watcher
    watcher.stop()


def _custom(k8s_api):
    return client.CustomObjectsApi(k8s_api)


def _get(k8s_api, namespace, name):
    return _custom(k8s_api).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def _status(k8s_api, namespace, name) -> dict:
    return _get(k8s_api, namespace, name).get("status") or {}


def _apply(kubectl, namespace, doc: dict) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc))


def _tiny(**spec_changes) -> dict:
    doc = yaml.safe_load(TINY.read_text())
    doc["spec"].update(copy.deepcopy(spec_changes))
    return doc


def _wait_phase(wait_until, k8s_api, namespace, name, phases, op, timeout=RUN_TIMEOUT):
    def reached():
        status = _status(k8s_api, namespace, name)
        return status if status.get("phase") in phases else None

    try:
        return wait_until(reached, timeout, f"CreamRun {name} to reach {phases}", interval=1)
    except AssertionError:
        status = _status(k8s_api, namespace, name)
        raise AssertionError(f"status: {json.dumps(status, indent=1)[-4000:]}\n"
                             f"operator log:\n{op.log_text()[-4000:]}") from None


def _metric(text: str, name: str, **labels) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def _jobs(k8s_api, namespace) -> list:
    return client.BatchV1Api(k8s_api).list_namespaced_job(namespace).items


def _events(k8s_api, namespace, run) -> list:
    return client.CoreV1Api(k8s_api).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={run}").items


def _gone(k8s_api, namespace, name) -> bool:
    try:
        _get(k8s_api, namespace, name)
    except client.ApiException as exc:
        return exc.status == 404
    return False


def test_tiny_run_succeeds_through_an_operator_restart(
        k8s_api, kubectl, namespace, operator, creations, s3, bucket, wait_until):
    _apply(kubectl, namespace, _tiny())

    # Kill the operator while iteration 1's sample stage runs, let that Job finish without it,
    # then start it again: it must pick up from the status and the finished Job.
    def sampling():
        status = _status(k8s_api, namespace, "tiny")
        assert status.get("phase") != "Failed", json.dumps(status, indent=1)
        return any(j.status.active and j.metadata.annotations.get(f"{GROUP}/step")
                   == "iter-1/sample" for j in _jobs(k8s_api, namespace))

    wait_until(sampling, RUN_TIMEOUT, "iteration 1's sample stage to start", interval=0.2)
    operator.kill()
    wait_until(lambda: any(j.status.succeeded and j.metadata.annotations.get(
        f"{GROUP}/step") == "iter-1/sample" for j in _jobs(k8s_api, namespace)),
        600, "the sample Job to finish while the operator is down", interval=1)
    operator.start()

    status = _wait_phase(wait_until, k8s_api, namespace, "tiny", {"Succeeded", "Failed"},
                         operator)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    # Every stage ran as exactly one Job, created once, across the restart.
    run = specfile.parse(yaml.safe_load(TINY.read_text()))
    steps = pipeline.plan(run.spec, status["artifacts"])
    assert len(creations.uids) == len(steps) == 15
    assert all(len(uids) == 1 for uids in creations.uids.values()), dict(creations.uids)
    jobs = _jobs(k8s_api, namespace)
    assert sorted(j.metadata.annotations[f"{GROUP}/step"] for j in jobs) == \
        sorted(s.key for s in steps)
    assert all(j.status.succeeded == 1 and not j.status.failed for j in jobs)

    # Status, the artifacts in S3 and the metrics agree.
    results = {r["iteration"]: r for r in status["results"]}
    assert sorted(results) == [0, 1, 2]
    bucket_client = s3.client()
    prefix = f"s3://{bucket}/"
    manifests = {}
    for step in steps:
        key = step.manifest_uri.removeprefix(prefix)
        manifests[step.key] = json.loads(
            bucket_client.get_object(Bucket=bucket, Key=key)["Body"].read())
    for t in (1, 2):
        m = manifests[f"iter-{t}/consistency"]["metrics"]
        assert results[t]["consistencyRate"] == pytest.approx(m["consistency_rate"])
        assert results[t]["pairs"] == m["pairs"] and results[t]["dropped"] == m["dropped"]
        assert 0.0 <= results[t]["consistencyRate"] <= 1.0
        assert results[t]["modelUri"] == f"{status['artifacts']}/models/M{t + 1}"
        assert bucket_client.head_object(
            Bucket=bucket, Key=f"{results[t]['modelUri'].removeprefix(prefix)}/{MANIFEST}")
    for t in (0, 1, 2):
        acc = manifests[f"iter-{t}/evaluate"]["metrics"]["accuracy"]
        assert results[t]["accuracy"] == pytest.approx(acc)
        assert set(acc) == {"arc_easy", "arc_challenge", "openbookqa", "siqa", "gsm8k",
                            "lm_arc_easy"}  # the last through lm-evaluation-harness
    # The status' own figures are rounded for `kubectl get`; the results keep full precision.
    assert status["consistencyRate"] == round(results[2]["consistencyRate"], 3)
    latest = results[2]["accuracy"]
    assert status["accuracy"] == round(sum(latest.values()) / len(latest), 3)

    text = operator.metrics_text()
    for t in (1, 2):
        assert _metric(text, "cream_consistency_rate", namespace=namespace, run="tiny",
                       iteration=t) == pytest.approx(results[t]["consistencyRate"])
        assert _metric(text, "cream_dpo_pairs", namespace=namespace, run="tiny",
                       iteration=t) == results[t]["pairs"]
    for t in (0, 1, 2):
        for task, acc in results[t]["accuracy"].items():
            assert _metric(text, "cream_eval_accuracy", namespace=namespace, run="tiny",
                           iteration=t, task=task) == pytest.approx(acc)
    assert _metric(text, "cream_runs", phase="Succeeded") == 1
    # Durations of the stages that finished after the restart (the restarted operator saw
    # sample finish too: it was not in the status yet).
    assert _metric(text, "cream_stage_duration_seconds_count", stage="dpo") == 2
    assert _metric(text, "cream_stage_duration_seconds_count", stage="sample") >= 1

    # What `kubectl get creamruns` shows.
    table = kubectl("get", "creamruns", "-n", namespace).stdout
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "PHASE", "ITERATION", "STAGE", "CONSISTENCY", "AGE"]
    assert row.split()[:3] == ["tiny", "Succeeded", "2"]
    assert row.split()[3] == str(status["consistencyRate"])  # no stage left: a blank STAGE
    wide = kubectl("get", "creamruns", "-n", namespace, "-o", "wide").stdout
    header, row = wide.splitlines()[:2]
    assert header.split()[:9] == ["NAME", "PHASE", "ITERATION", "STAGE", "CONSISTENCY",
                                  "ACCURACY", "MODEL", "MESSAGE", "AGE"]
    assert str(status["accuracy"]) in row.split() and "builtin://tiny-llama" in row.split()

    # Events tell the story of each stage, each once, the kill notwithstanding (a Job's events
    # are posted before the status write that records them, named after the Job).
    def reasons():
        return [e.reason for e in _events(k8s_api, namespace, "tiny")]

    wait_until(lambda: reasons().count("StageSucceeded") == 15, 30, "an event per stage")
    assert reasons().count("StageStarted") == 15

    # Deleting the run removes its Jobs and its metric series; the artifacts stay.
    _custom(k8s_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
    wait_until(lambda: not _jobs(k8s_api, namespace), 120, "the run's Jobs to be deleted")
    wait_until(lambda: 'run="tiny"' not in operator.metrics_text(), 60,
               "the run's metric series to go")
    assert bucket_client.head_object(Bucket=bucket, Key=steps[-1].manifest_uri.removeprefix(
        prefix))


def test_bad_data_fails_the_run_with_the_stage_and_the_reason(
        k8s_api, kubectl, namespace, operator, s3, bucket, wait_until):
    s3.client().put_object(Bucket=bucket, Key="data/prompts.jsonl",
                           Body=b'{"id": "p1", "prompt": "Say hi."}\n{"id": "p2", "prompt": \n')
    doc = _tiny(iterations=1, data={"prompts": [f"s3://{bucket}/data/prompts.jsonl"]},
                model={**_tiny()["spec"]["model"], "sft": "builtin://tiny-llama"},
                evaluation={"tasks": [], "baseline": False})
    doc["metadata"]["name"] = "bad-data"
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "bad-data", {"Failed", "Succeeded"},
                         operator, timeout=300)
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "iter-1/sample" in failed["message"]
    assert "prompts.jsonl" in failed["message"] and "line 2" in failed["message"]
    # Bad input is not retried: one Pod, and the Job failed by its pod failure policy.
    job = next(j for j in _jobs(k8s_api, namespace))
    assert job.status.failed == 1
    assert _metric(operator.metrics_text(), "cream_stage_failures_total", stage="sample") == 1
    assert _metric(operator.metrics_text(), "cream_runs", phase="Failed") == 1

    # Fixing the data and touching the spec retries the failed stage.
    s3.client().put_object(Bucket=bucket, Key="data/fixed.jsonl",
                           Body=b'{"id": "p1", "prompt": "Say hi."}\n'
                                b'{"id": "p2", "prompt": "Name a color."}\n')
    fixed = copy.deepcopy(doc)
    fixed["spec"]["data"]["prompts"] = [f"s3://{bucket}/data/fixed.jsonl"]
    _apply(kubectl, namespace, fixed)
    wait_until(lambda: (_status(k8s_api, namespace, "bad-data").get("stage") or "")
               in ("score", "consistency", "dpo"), 300, "the retried sample stage to pass")


ACTION = re.compile(r"((?:job created|job deleted|service created|phase changed|cleanup started)"
                    r" run=\S+.*)$")


def test_a_kill_between_job_and_status_loses_no_event_and_a_run_deletes_without_the_operator(
        k8s_api, kubectl, namespace, operator, s3, bucket, wait_until):
    s3.client().put_object(Bucket=bucket, Key="data/prompts.jsonl",
                           Body=b'{"id": "p1", "prompt": "Say hi."}\n{"id": "p2", "prompt": \n')
    doc = _tiny(iterations=1, data={"prompts": [f"s3://{bucket}/data/prompts.jsonl"]},
                model={**_tiny()["spec"]["model"], "sft": "builtin://tiny-llama"},
                evaluation={"tasks": [], "baseline": False})
    doc["metadata"]["name"] = "lifecycle"

    # The world an operator killed right after creating the first Job leaves: the Job, and a run
    # whose status does not know it (no StageStarted posted either).
    operator.stop()
    _apply(kubectl, namespace, doc)
    run = _get(k8s_api, namespace, "lifecycle")
    spec = CreamRunSpec.model_validate(run["spec"])
    config = OperatorConfig.from_env(operator.env)
    step = next(s for s in pipeline.plan(spec, artifact_root(run["metadata"], spec, config))
                if s.key == "iter-1/sample")
    first = client.BatchV1Api(k8s_api).create_namespaced_job(
        namespace, jobs.job_manifest(run, spec, step, config))
    operator.start()

    # The restarted operator takes the Job as the step's (the bad data fails it) and announces
    # its start: once.
    _wait_phase(wait_until, k8s_api, namespace, "lifecycle", {"Failed"}, operator, 300)
    assert [j.metadata.uid for j in _jobs(k8s_api, namespace)] == [first.metadata.uid]

    def told(reason):
        return [e for e in _events(k8s_api, namespace, "lifecycle") if e.reason == reason
                and e.message.startswith("iter-1/sample")]

    wait_until(lambda: told("StageFailed"), 30, "the StageFailed event")
    assert len(told("StageStarted")) == 1 and len(told("StageFailed")) == 1

    # A spec change retries the stage: the failed Job is deleted, a new one created.
    s3.client().put_object(Bucket=bucket, Key="data/fixed.jsonl",
                           Body=b'{"id": "p1", "prompt": "Say hi."}\n')
    doc["spec"]["data"]["prompts"] = [f"s3://{bucket}/data/fixed.jsonl"]
    _apply(kubectl, namespace, doc)

    def retried():
        return next((j for j in _jobs(k8s_api, namespace)
                     if j.metadata.uid != first.metadata.uid), None)

    second = wait_until(retried, 60, "the retried stage's new Job")
    # One StageStarted per Job of the step (both Jobs have the step's name).
    wait_until(lambda: len(told("StageStarted")) >= 2, 30, "the new Job's StageStarted")
    assert len(told("StageStarted")) == 2

    # The operator's log: one line per action it took, none twice (kopf's own handler on the
    # root logger is the only one).
    wait_until(lambda: f"job created run={namespace}/lifecycle" in operator.log_text(), 30,
               "the operator to log the new Job")
    actions = [m.group(1) for line in operator.log_text().splitlines()
               if (m := ACTION.search(line))]
    assert len(actions) == len(set(actions)), actions
    who = f"run={namespace}/lifecycle"
    assert f"job deleted {who} job={first.metadata.name}" in actions, actions
    assert f"job created {who} job={second.metadata.name} step=iter-1/sample" in actions, actions
    # The first Job was ours: the operator created the Job of that name once.
    assert sum(a.startswith(f"job created {who} job={first.metadata.name} ")
               for a in actions) == 1, actions
    assert any(a.startswith(f"phase changed {who} phase_from=Failed phase=Running")
               for a in actions), actions

    # A run that keeps its artifacts carries no finalizer: deleted with the operator down, it
    # is gone at once (its Jobs go through their ownerReferences).
    assert not _get(k8s_api, namespace, "lifecycle")["metadata"].get("finalizers")
    operator.stop()
    _custom(k8s_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                     "lifecycle")
    wait_until(lambda: _gone(k8s_api, namespace, "lifecycle"), 10,
               "the CreamRun to go with the operator down")


def _stage_pids(step: str, run: str) -> list[int]:
    """Processes of a stage Pod, found by the env the operator gives each stage."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if f"CREAM_STEP={step}".encode() in env and f"CREAM_RUN={run}".encode() in env \
                and b"cream_stages" in cmd:
            pids.append(int(proc.name))
    return pids


def test_a_crashed_stage_is_retried_then_suspend_and_delete(
        k8s_api, kubectl, namespace, operator, s3, bucket, wait_until):
    doc = _tiny(iterations=1, model={**_tiny()["spec"]["model"], "sft": "builtin://tiny-llama"},
                evaluation={"tasks": [], "baseline": False}, suspend=True,
                cleanupPolicy="Delete")
    doc["metadata"]["name"] = "crash"
    _apply(kubectl, namespace, doc)

    # Suspended from the start: no Job is created.
    status = _wait_phase(wait_until, k8s_api, namespace, "crash", {"Suspended"}, operator, 60)
    assert next(c for c in status["conditions"] if c["type"] == "Suspended")["status"] == "True"
    time.sleep(3)
    assert _jobs(k8s_api, namespace) == []

    # Resume: the first stage starts; kill its process as a crash would.
    doc["spec"]["suspend"] = False
    _apply(kubectl, namespace, doc)
    pids = wait_until(lambda: _stage_pids("iter-1/sample", f"{namespace}/crash"), 120,
                      "the sample stage's process")
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    # The Job retries (backoffLimit 2) and the stage then succeeds.
    def sample_job():
        return next((j for j in _jobs(k8s_api, namespace)
                     if j.metadata.annotations.get(f"{GROUP}/step") == "iter-1/sample"), None)

    wait_until(lambda: (sample_job().status.succeeded or 0) > 0, 300,
               "the retried sample Job to succeed")
    job = sample_job()
    assert job.status.failed == 1 and job.status.succeeded == 1

    # Suspend again: the stages running finish, nothing new starts.
    doc["spec"]["suspend"] = True
    _apply(kubectl, namespace, doc)
    _wait_phase(wait_until, k8s_api, namespace, "crash", {"Suspended"}, operator, 60)
    wait_until(lambda: all(j.status.succeeded or j.status.failed
                           for j in _jobs(k8s_api, namespace)), 300, "running stages to end")
    count = len(_jobs(k8s_api, namespace))
    time.sleep(5)
    assert len(_jobs(k8s_api, namespace)) == count

    # Delete: with cleanupPolicy Delete the artifacts go too, then the run, its Jobs and series.
    root = _status(k8s_api, namespace, "crash")["artifacts"].removeprefix(f"s3://{bucket}/")

    def objects():
        return s3.client().list_objects_v2(Bucket=bucket, Prefix=root).get("KeyCount", 0)

    assert objects() > 0
    # Its deletion needs the operator: kopf's finalizer holds the run until the cleanup ran.
    assert _get(k8s_api, namespace, "crash")["metadata"].get("finalizers")
    _custom(k8s_api).delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "crash")
    wait_until(lambda: objects() == 0, 180, "the run's artifacts to be deleted")

    wait_until(lambda: _gone(k8s_api, namespace, "crash"), 120,
               "the CreamRun to go once its artifacts are gone")
    wait_until(lambda: not [j for j in _jobs(k8s_api, namespace)
                            if j.metadata.labels.get("app.kubernetes.io/name") == "cream-stage"],
               120, "the run's Jobs to be deleted")
    wait_until(lambda: 'run="crash"' not in operator.metrics_text()
               and _metric(operator.metrics_text(), "cream_runs", phase="Suspended") == 0,
               60, "the run's metric series to go")


def test_the_api_server_rejects_a_creamrun_that_cannot_work(crd, kubectl, namespace):
    doc = _tiny()
    doc["spec"]["sampling"]["responsesPerPrompt"] = 1
    doc["spec"]["consistency"]["strategy"] = "median"
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0
    assert "spec.sampling.responsesPerPrompt" in proc.stderr
    assert "spec.consistency.strategy" in proc.stderr

    doc = _tiny()
    del doc["spec"]["data"]["sft"]
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "data.sft is required" in proc.stderr

    # The model and storage are immutable once created.
    ok = _tiny(suspend=True)
    ok["metadata"]["name"] = "immutable"
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ok))
    ok["spec"]["model"]["base"] = "hf://someone/else"
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ok), check=False)
    assert proc.returncode != 0 and "spec.model is immutable" in proc.stderr


def test_a_malformed_uri_and_a_long_name_are_refused_at_the_api_server(crd, kubectl,
                                                                        namespace):
    doc = _tiny()
    doc["metadata"]["name"] = "r" * 64
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0 and "metadata.name" in proc.stderr

    # (The API server runs CEL rules only on an object its schema accepts: one problem at once.)
    doc = _tiny()
    doc["spec"]["data"]["sft"] = "s3:cream-data/sft.jsonl"
    proc = kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(doc), check=False)
    assert proc.returncode != 0
    assert "spec.data.sft" in proc.stderr and "s3://<bucket>/<key>" in proc.stderr


def test_a_job_the_api_server_refuses_fails_the_run_naming_the_field(
        k8s_api, kubectl, namespace, operator, wait_until):
    """The CRD cannot check everything a Job's Pod template must be; what it lets through ends
    Failed with the API server's own words, once, instead of a run without a phase."""
    doc = _tiny(scheduling={"nodeSelector": {"not a label key!": "x"}})
    doc["metadata"]["name"] = "refused"
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "refused", {"Failed", "Succeeded"},
                         operator, timeout=120)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "StageFailed"
    assert "refused its Job" in failed["message"] and "nodeSelector" in failed["message"]
    assert "iter-0/sft" in failed["message"]
    assert _jobs(k8s_api, namespace) == []
    assert "Traceback" not in operator.log_text()


def test_a_run_naming_what_the_operator_may_not_use_fails_before_any_job(
        k8s_api, kubectl, namespace, operator, wait_until):
    """No confused deputy, where no admission policy refuses it first: the operator does not
    create a Job with an image, ServiceAccount or Secret its configuration does not allow."""
    doc = _tiny(scheduling={"image": "evil.example/miner:1",
                            "serviceAccountName": "cluster-admin"})
    doc["metadata"]["name"] = "deputy"
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "deputy", {"Failed", "Succeeded"},
                         operator, timeout=120)
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "NotAllowed"
    assert "spec.scheduling.image: evil.example/miner:1 is not allowed" in failed["message"]
    assert "spec.scheduling.serviceAccountName: cluster-admin is not allowed" in failed["message"]
    assert _jobs(k8s_api, namespace) == []
    assert any(e.reason == "NotAllowed" for e in _events(k8s_api, namespace, "deputy"))


@pytest.fixture
def operator_allowing_trainer(crd, kube_env, namespace, bucket, s3_secret, tmp_path):
    """An operator whose installer allowed the ServiceAccount `trainer` (policy.py)."""
    env = {**kube_env, "CREAM_ALLOWED_SERVICE_ACCOUNTS": "trainer"}
    op = OperatorProcess(env, namespace, tmp_path, f"s3://{bucket}/runs").start()
    yield op
    op.stop()


def test_a_stage_whose_pods_cannot_be_created_says_why_within_seconds_and_recovers(
        k8s_api, kubectl, namespace, operator_allowing_trainer, wait_until):
    """A Job whose Pods the API server refuses (here: spec.scheduling names a ServiceAccount not
    there yet) shows only as the Job controller's FailedCreate Event on the Job. The run says so
    within seconds, as a condition and a Warning event in the API server's words, and goes on by
    itself once the cause is fixed: the Job controller tries again."""
    doc = _tiny(iterations=1, scheduling={"serviceAccountName": "trainer"},
                evaluation={"tasks": [], "baseline": False})
    doc["metadata"]["name"] = "no-sa"
    _apply(kubectl, namespace, doc)
    applied = time.monotonic()

    def failing():
        status = _status(k8s_api, namespace, "no-sa")
        cond = next((c for c in status.get("conditions") or []
                     if c["type"] == "PodCreationFailed"), None)
        return (status, cond) if cond and cond["status"] == "True" else None

    status, cond = wait_until(failing, 30, "the PodCreationFailed condition", interval=0.2)
    seconds = time.monotonic() - applied
    assert cond["reason"] == "FailedCreate"
    assert 'serviceaccount "trainer" not found' in cond["message"], cond
    assert cond["message"].startswith("iter-0/sft: cannot create its Pods")
    assert status["phase"] == "Pending", status
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "PodCreationFailed")
    warning = wait_until(lambda: [e for e in _events(k8s_api, namespace, "no-sa")
                                  if e.reason == "PodCreationFailed"], 10, "the Warning event")
    assert warning[0].type == "Warning" and "trainer" in warning[0].message
    assert seconds < 20, f"told after {seconds:.0f}s"

    # The fix: the ServiceAccount. The Job controller's next try creates the Pod.
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "trainer"}})

    def recovered():
        status = _status(k8s_api, namespace, "no-sa")
        cond = next(c for c in status["conditions"] if c["type"] == "PodCreationFailed")
        return status if cond["status"] == "False" else None

    status = wait_until(recovered, 120, "the run to recover", interval=0.5)
    assert status["phase"] in ("Running", "Succeeded"), status
    wait_until(lambda: any(e.reason == "PodsCreated"
                           for e in _events(k8s_api, namespace, "no-sa")), 10,
               "the PodsCreated event")
    assert "Traceback" not in operator_allowing_trainer.log_text()


SMOLLM2 = ROOT / "examples" / "smollm2.yaml"


def _smollm2_small() -> dict:
    """examples/smollm2.yaml at test size: the real model, its GGUF source and the generated
    tasks, through every stage of two iterations, in minutes."""
    doc = yaml.safe_load(SMOLLM2.read_text())
    spec = doc["spec"]
    spec["data"] = {"sft": "gen://arithmetic?n=4&seed=11&ops=add,sub",
                    "prompts": ["gen://arithmetic?n=2&seed=21&ops=add,sub",
                                "gen://arithmetic?n=2&seed=22&ops=add,sub"]}
    spec["sft"]["batchSize"] = 4
    # `dynamic` with 3 responses: a prompt's C is 0, 1/3, 2/3 or 1, never the 1/2 at which the
    # DPO gradient at the reference is exactly 0. With `avg` the mean of two prompts' C can be
    # 1/2: then M2 == M1, every r_2 ties and iteration 2 has no pair (seen with this spec).
    spec["consistency"]["strategy"] = "dynamic"
    spec["sampling"].update(responsesPerPrompt=3, maxTokens=16)
    spec["evaluation"]["maxTokens"] = 16
    spec["evaluation"]["tasks"] = [
        {"name": "arithmetic", "uri": "gen://arithmetic?n=2&seed=1001&ops=add,sub",
         "format": "gsm8k"},
        {"name": "choice5", "uri": "gen://choice?n=2&seed=1002&options=5&labels=numbers",
         "format": "multiple_choice"}]
    return doc


@pytest.fixture
def smollm2_operator(crd, kube_env, namespace, bucket, s3_secret, tmp_path):
    """An operator whose stage Pods share one model cache, where the GGUF file is converted once
    (by the first stage that needs it); one torch thread per stage (shared cores)."""
    cache = ROOT / ".cache" / "cluster-test-models"  # the checkout stays visible in Pods
    env = {**kube_env, "CREAM_STAGE_ENV_CREAM_CACHE_DIR": str(cache),
           "CREAM_STAGE_ENV_CREAM_TORCH_THREADS": "1"}
    op = OperatorProcess(env, namespace, tmp_path, f"s3://{bucket}/runs").start()
    yield op
    op.stop()


@pytest.fixture
def multinode_operator(crd, kube_env, namespace, bucket, s3_secret, tmp_path):
    # torchrun's store on index 0 binds the rendezvous port on every address of this machine:
    # a free one, not the default 29500, which anything else here may hold.
    env = {**kube_env, "CREAM_TORCHRUN_PORT": str(free_port())}
    op = OperatorProcess(env, namespace, tmp_path, f"s3://{bucket}/runs").start()
    yield op
    op.stop()


def test_smollm2_run_succeeds_through_the_operator(
        k8s_api, kubectl, namespace, smollm2_operator, wait_until):
    doc = _smollm2_small()
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "smollm2", {"Succeeded", "Failed"},
                         smollm2_operator, timeout=3000)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    results = {r["iteration"]: r for r in status["results"]}
    assert sorted(results) == [0, 1, 2]
    for t in (1, 2):
        assert 0.0 <= results[t]["consistencyRate"] <= 1.0
        assert results[t]["pairs"] + results[t]["dropped"] == 2
    for t in (0, 1, 2):
        assert set(results[t]["accuracy"]) == {"arithmetic", "choice5"}


def _workers(step: str, run: str, index: int) -> list[int]:
    """The training processes (torchrun's workers, which have a RANK) of one Pod of a
    multi-node stage. A worker's own children inherit its RANK and, forked, its command line
    (a subprocess between fork and exec, a compile or loader worker): only processes whose parent
    has no RANK (torchrun's agent) are the workers."""
    ranked = {}
    for pid in _stage_pids(step, run):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            # The command name in /proc/PID/stat is in parentheses and may hold spaces.
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if f"JOB_COMPLETION_INDEX={index}".encode() in env and any(
                v.startswith(b"RANK=") for v in env):
            ranked[pid] = ppid
    return [pid for pid, ppid in ranked.items() if ppid not in ranked]


def _listening(pid: int) -> set[str]:
    """The IPv4 addresses a process listens on (its sockets in /proc/net/tcp, state LISTEN)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:
            ip = bytes.fromhex(fields[1].split(":")[0])[::-1]
            found.add(".".join(str(b) for b in ip))
    return found


def _step_job(k8s_api, namespace, step: str):
    return next((j for j in _jobs(k8s_api, namespace)
                 if j.metadata.annotations.get(f"{GROUP}/step") == step), None)


def _pods_of(k8s_api, namespace, job: str) -> list:
    return client.CoreV1Api(k8s_api).list_namespaced_pod(
        namespace, label_selector=f"batch.kubernetes.io/job-name={job}").items


def test_two_node_training_runs_as_indexed_jobs_and_a_killed_worker_retries_the_stage(
        k8s_api, kubectl, namespace, multinode_operator, s3, bucket, wait_until,
        node_agent, second_node):
    """sft and dpo on two nodes: an Indexed Job of two Pods (more than half a node's CPUs each,
    so one per Node) that find each other through the headless Service's names, rendezvous with
    torchrun and train with DeepSpeed over gloo (ZeRO-3 for sft, ZeRO-2 for dpo). One worker is
    killed mid-training: both Pods fail, the Job runs the stage again from the start, and no
    model is committed in between."""
    op = multinode_operator
    two_nodes = {"gpus": 0, "cpu": "9", "memory": "2Gi", "nodes": 2}
    doc = _tiny(iterations=1, evaluation={"tasks": [], "baseline": False})
    doc["metadata"]["name"] = "two-nodes"
    spec = doc["spec"]
    spec["sft"].update(backend="deepspeed", zeroStage=3)
    spec["dpo"].update(backend="deepspeed", zeroStage=2)
    spec["resources"].update(sft=two_nodes, dpo=two_nodes)
    _apply(kubectl, namespace, doc)
    run = f"{namespace}/two-nodes"

    # Mid-training: rank 0's progress bar has moved, then kill the worker on index 1.
    def training():
        status = _status(k8s_api, namespace, "two-nodes")
        assert status.get("phase") != "Failed", json.dumps(status, indent=1)
        job = _step_job(k8s_api, namespace, "iter-0/sft")
        for pod in _pods_of(k8s_api, namespace, job.metadata.name) if job else []:
            if pod.metadata.annotations.get("batch.kubernetes.io/job-completion-index") == "0":
                log = node_agent.log(pod)
                steps = re.findall(r"sft:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)", log.read_text(
                    errors="replace")) if log.exists() else []
                if steps and 3 <= int(steps[-1][0]) < int(steps[-1][1]):
                    return job
        return None

    job = wait_until(training, RUN_TIMEOUT, "sft to be training on two nodes", interval=0.5)
    sft = next(s for s in pipeline.plan(specfile.parse(doc).spec,
                                        _status(k8s_api, namespace, "two-nodes")["artifacts"])
               if s.key == "iter-0/sft")
    out = sft.request.output.removeprefix(f"s3://{bucket}/")
    # Each rank's collectives (gloo) listen on its own Pod's address: the one its hostname
    # resolves to through the Pod's /etc/hosts.
    pods = {p.metadata.annotations["batch.kubernetes.io/job-completion-index"]: p
            for p in _pods_of(k8s_api, namespace, job.metadata.name)
            if p.status.phase == "Running"}
    for index in (0, 1):
        [worker] = wait_until(lambda i=index: _workers("iter-0/sft", run, i), 30,
                              f"index {index}'s worker")
        assert pods[str(index)].status.pod_ip in _listening(worker)
    workers = _workers("iter-0/sft", run, 1)
    for pid in workers:
        os.kill(pid, signal.SIGKILL)

    # The survivor fails too (gloo sees its peer gone), the Job counts both and starts the stage
    # again; meanwhile nothing of the half-trained model is in S3, manifest or weights.
    def first_attempt_failed():
        current = client.BatchV1Api(k8s_api).read_namespaced_job(job.metadata.name, namespace)
        return (current.status.failed or 0) >= 2

    wait_until(first_attempt_failed, 300, "both Pods of the first attempt to fail")
    assert s3.client().list_objects_v2(Bucket=bucket, Prefix=out).get("KeyCount", 0) == 0

    status = _wait_phase(wait_until, k8s_api, namespace, "two-nodes", {"Succeeded", "Failed"},
                         op)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)

    manifest = json.loads(s3.client().get_object(
        Bucket=bucket, Key=f"{out}/{MANIFEST}")["Body"].read())
    # The whole training, not a resumed half: 66 examples in micro-batches of 8 over 2 ranks is
    # 5 steps an epoch (train_loop.steps_per_epoch), 15 epochs.
    assert manifest["metrics"]["steps"] == 15 * 5
    log = s3.client().get_object(Bucket=bucket, Key=f"{out}/train_log.jsonl")["Body"].read()
    assert len(log.splitlines()) == 75
    for step, failures in (("iter-0/sft", 2), ("iter-1/dpo", 0)):
        job = _step_job(k8s_api, namespace, step)
        name = job.metadata.name
        assert job.spec.completion_mode == "Indexed" and job.spec.completions == 2
        assert job.status.succeeded == 2 and (job.status.failed or 0) == failures, step
        service = client.CoreV1Api(k8s_api).read_namespaced_service(name, namespace)
        assert service.spec.cluster_ip == "None"
        done = [p for p in _pods_of(k8s_api, namespace, name) if p.status.phase == "Succeeded"]
        assert {p.spec.node_name for p in done} == {node_agent.name, second_node}, step
        assert len({p.status.pod_ip for p in done}) == 2
        assert {p.spec.hostname for p in done} == {f"{name}-0", f"{name}-1"}
        assert all(p.spec.subdomain == name for p in done)


# --- a run as a schedule of steps (issue 10) ----------------------------------------------------
# A mixed schedule through the operator: SFT, SPIN, a judge-rewarded iteration with judge
# consistency and a CREAM iteration, each stage a Job, reaching Succeeded with the status, the
# artifacts in S3 and the metrics agreeing; and a judge that never parses failing its stage.

DIGIT_JUDGE = {"template": "Rate from 0 to 9.\nQ: {prompt}\nA: {response}\nRating:",
               "pattern": "([0-9])", "maxScore": 9, "judgements": 2, "maxTokens": 16}


def _mixed(name: str, schedule: list, **spec_changes) -> dict:
    doc = yaml.safe_load(TINY.read_text())
    doc["metadata"]["name"] = name
    spec = doc["spec"]
    del spec["iterations"]
    spec["schedule"] = schedule
    spec["data"]["prompts"] = spec["data"]["prompts"][:1]
    spec["data"]["maxPrompts"] = 6
    spec["sft"]["epochs"] = 2
    spec["evaluation"]["tasks"] = [{"name": "arc_easy", "uri": "builtin://data/arc_easy.jsonl",
                                    "format": "multiple_choice", "limit": 3}]
    spec.update(spec_changes)
    return doc


def test_a_mixed_schedule_succeeds_through_the_operator(
        k8s_api, kubectl, namespace, operator, creations, s3, bucket, wait_until):
    doc = _mixed("mixed", [
        {"kind": "sft"}, {"kind": "spin", "lambda": 0.5},
        {"kind": "selfReward", "reward": "judge", "judge": {**DIGIT_JUDGE, "consistency": True}},
        {"kind": "selfReward"}])
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "mixed", {"Succeeded", "Failed"},
                         operator, timeout=RUN_TIMEOUT)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-4000:]

    steps = pipeline.plan(specfile.parse(doc).spec, status["artifacts"])
    assert sorted(j.metadata.annotations["cream.dev/step"] for j in _jobs(k8s_api, namespace)) \
        == sorted(s.key for s in steps)
    assert all(len(uids) == 1 for uids in creations.uids.values())
    client_ = s3.client()
    prefix = f"s3://{bucket}/"
    manifests = {s.key: json.loads(client_.get_object(
        Bucket=bucket, Key=s.manifest_uri.removeprefix(prefix))["Body"].read()) for s in steps}
    results = {r["iteration"]: r for r in status["results"]}
    assert sorted(results) == [0, 1, 2, 3]
    assert [results[t].get("kind") for t in (1, 2, 3)] == ["spin", "selfReward", "selfReward"]

    spin = manifests["iter-1/spin"]["metrics"]
    assert results[1]["pairs"] == spin["pairs"] and results[1]["dropped"] == spin["dropped"]
    judge = manifests["iter-2/judge-m2"]["metrics"]
    assert results[2]["judgeParseFailures"] == judge["parse_failures"]
    assert results[2]["judgeScoreMean"] == pytest.approx(judge["score_mean"])
    assert results[2]["judgeScoreCounts"] == judge["score_histogram"]
    # Judge consistency: M1, the previous model, judged the same responses.
    assert manifests["iter-2/judge-m1"]["request"]["model"] == \
        f"{status['artifacts']}/models/M1"
    cons2 = manifests["iter-2/consistency"]["metrics"]
    assert cons2["reward"] == "judge" and results[2]["pairs"] == cons2["pairs"]
    cons3 = manifests["iter-3/consistency"]["metrics"]
    assert results[3]["consistencyRate"] == pytest.approx(cons3["consistency_rate"])
    for t in (1, 2, 3):
        dpo = manifests[f"iter-{t}/dpo"]
        assert results[t]["rewardMargin"] == pytest.approx(dpo["metrics"]["reward_margin"])
        assert results[t]["modelUri"] == f"{status['artifacts']}/models/M{t + 1}"
    assert manifests["iter-1/dpo"]["request"]["beta"] == 0.5

    text = operator.metrics_text()
    assert _metric(text, "cream_reward_margin", namespace=namespace, run="mixed", iteration=1,
                   step="spin") == pytest.approx(results[1]["rewardMargin"])
    assert _metric(text, "cream_reward_accuracy", namespace=namespace, run="mixed",
                   iteration=3, step="selfReward") == \
        pytest.approx(results[3]["rewardAccuracy"])
    assert _metric(text, "cream_judge_parse_failures", namespace=namespace, run="mixed",
                   iteration=2) == results[2]["judgeParseFailures"]
    for score, count in results[2]["judgeScoreCounts"].items():
        assert _metric(text, "cream_judge_scores", namespace=namespace, run="mixed",
                       iteration=2, score=score) == count
    assert _metric(text, "cream_consistency_rate", namespace=namespace, run="mixed",
                   iteration=3) == pytest.approx(results[3]["consistencyRate"])


def test_a_judge_that_never_parses_fails_the_run_saying_so(
        k8s_api, kubectl, namespace, operator, wait_until):
    doc = _mixed("unparsed", [{"kind": "selfReward", "reward": "judge",
                               "judge": {"judgements": 1, "maxTokens": 8}}],
                 evaluation={"tasks": [], "baseline": False})
    doc["spec"]["model"]["sft"] = "builtin://tiny-llama"
    del doc["spec"]["data"]["sft"]
    _apply(kubectl, namespace, doc)
    status = _wait_phase(wait_until, k8s_api, namespace, "unparsed", {"Succeeded", "Failed"},
                         operator, timeout=600)
    assert status["phase"] == "Failed"
    assert "iter-1/judge-m1" in status["message"]
    assert "never returned a parseable score: 0 of 24 judgements" in status["message"]
