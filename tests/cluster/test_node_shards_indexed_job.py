"""An inference stage over several nodes on the real control plane: the Indexed Job that jobs.py
builds for `resources.sample.nodes: 2` runs its two Pods through the real Job controller and node
agent, they meet only through their shards in the real S3 server, and the merged output equals a
one-node Job's byte for byte. Also: the API server enforces tensorParallel's CEL rules."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from cream_operator import jobs, observe, pipeline, specfile
from cream_operator.config import OperatorConfig
from cream_operator.spec import GROUP, PLURAL
from cream_stages import artifacts
from kubeharness.testing import condition, job_pods, wait_job_finished

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())


def _sample_job(doc: dict, uid: str, bucket: str, namespace: str, tag: str) -> dict:
    """The Job the operator makes for iteration 1's sample step of `doc`, on the tiny model."""
    run = {"metadata": {"name": "shards", "namespace": namespace, "uid": uid}}
    spec = specfile.parse(doc).spec
    root = f"s3://{bucket}/runs/{namespace}/shards/{uid}"
    step = next(s for s in pipeline.plan(spec, root) if s.key == "iter-1/sample")
    # M1 is not trained here: sample from M0, a few prompts, short answers
    request = step.request.model_copy(update={
        "model": "builtin://tiny-llama", "max_prompts": 5, "max_tokens": 8, "batch_size": 2,
        "output": f"{root}/{tag}"})
    step = dataclasses.replace(step, request=request)
    job = jobs.job_manifest(run, spec, step, OperatorConfig())
    # No CreamRun with this uid exists: the garbage collector would delete a Job owned by it,
    # mid-run on a slow machine. Ownership is the operator tests' subject, not this one's.
    del job["metadata"]["ownerReferences"]
    return job


def _read(s3, bucket: str, uri: str) -> bytes:
    key = uri.removeprefix(f"s3://{bucket}/")
    return s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def test_a_two_node_sample_job_succeeds_and_matches_one_node(k8s_api, namespace, s3):
    bucket = s3.make_bucket()
    client.CoreV1Api(k8s_api).create_namespaced_secret(namespace, {
        "metadata": {"name": "cream-s3"}, "stringData": s3.env()})
    two = copy.deepcopy(TINY)
    two["spec"]["resources"]["sample"]["nodes"] = 2
    manifests = {"one": _sample_job(TINY, "uid-one", bucket, namespace, "one"),
                 "two": _sample_job(two, "uid-two", bucket, namespace, "two")}
    assert manifests["two"]["spec"]["completionMode"] == "Indexed"
    batch = client.BatchV1Api(k8s_api)
    for job in manifests.values():  # both at once: three Pods side by side
        batch.create_namespaced_job(namespace, job)
    done = {tag: wait_job_finished(k8s_api, namespace, job["metadata"]["name"], timeout=300)
            for tag, job in manifests.items()}
    for tag, job in done.items():
        assert condition(job, "Complete"), f"{tag}: {job['status']}"
    assert done["two"]["status"]["succeeded"] == 2

    out = {tag: _output(m) for tag, m in manifests.items()}
    one = _read(s3, bucket, f"{out['one']}/responses.jsonl")
    assert one and _read(s3, bucket, f"{out['two']}/responses.jsonl") == one
    manifest = json.loads(_read(s3, bucket, f"{out['two']}/manifest.json"))
    assert manifest["metrics"]["nodes"] == 2
    assert [n["node"] for n in manifest["metrics"]["node_shards"]] == [0, 1]
    # the operator reads node 0's report, whichever Pod ended last
    pods = job_pods(k8s_api, namespace, manifests["two"]["metadata"]["name"])
    assert len(pods) == 2
    view = observe.job_view(done["two"], pods)
    assert view.state == "succeeded" and view.metrics is not None


def _output(job: dict) -> str:
    """The output URI of the request a Job's Pods run (inline, as a data: URI)."""
    return artifacts.read_json(job["spec"]["template"]["spec"]["containers"][0]["args"][2])[
        "output"]


def test_the_api_server_enforces_tensor_parallel_rules(kubectl, namespace):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")

    def apply(resources: dict, backend: str = "vllm"):
        doc = copy.deepcopy(TINY)
        doc["spec"]["resources"].update(resources)
        for section in ("sampling", "scoring", "evaluation"):
            doc["spec"][section]["backend"] = backend
        return kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                       input=yaml.safe_dump(doc), check=False)

    assert apply({"sample": {"gpus": 8, "tensorParallel": 2}}).returncode == 0
    bad = apply({"sample": {"gpus": 8, "tensorParallel": 3}})
    assert bad.returncode != 0
    assert "spec.resources.sample.tensorParallel" in bad.stderr
    assert "tensorParallel must divide gpus" in bad.stderr
    unset = apply({"score": {"tensorParallel": 2}})
    assert unset.returncode != 0 and "spec.resources.score.tensorParallel" in unset.stderr
    training = apply({"dpo": {"gpus": 8, "tensorParallel": 2}})
    assert training.returncode != 0 and "tensorParallel applies to sample, score and evaluate" \
        in training.stderr
    transformers = apply({"sample": {"gpus": 2, "tensorParallel": 2}}, backend="transformers")
    assert transformers.returncode != 0 and "needs sampling.backend vllm" in transformers.stderr
