"""The operator with stage Pods played by kwok: the path the scale benchmark (bench/bench_scale.py)
takes, kept working. kwok plays GPU nodes beside the node agent and completes each stage Pod with
the termination message a real stage writes (fixtures/kwok-cream-stages.yaml), so the run's
results come through the real Job controller and the operator as in a real run. No stage code runs
and nothing is written to S3 (the storage URI names a bucket that need not exist)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kubernetes import client
from operator_process import JobCreations, OperatorProcess

from cream_operator.spec import GROUP, PLURAL, VERSION
from kubeharness.kwok import load_stages

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CREAM_STAGES = Path(__file__).with_name("fixtures") / "kwok-cream-stages.yaml"
RUNS = 5
TASKS = ("arc_easy", "gsm8k")
GPU_STAGES = ("sft", "sample", "score", "dpo", "evaluate")


@pytest.fixture(scope="module")
def crd(kubectl):
    kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "cream.dev_creamruns.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{PLURAL}.{GROUP}")


def _spec(kwok) -> dict:
    gpu = {"gpus": 1, "cpu": "4", "memory": "32Gi"}
    return {
        "iterations": 1,
        "model": {"base": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "data": {"sft": "s3://kwok-data/sft.jsonl", "prompts": ["s3://kwok-data/prompts.jsonl"]},
        "evaluation": {"baseline": False, "tasks": [
            {"name": TASKS[0], "uri": "s3://kwok-data/arc.jsonl", "format": "multiple_choice"},
            {"name": TASKS[1], "uri": "s3://kwok-data/gsm8k.jsonl", "format": "gsm8k"}]},
        "storage": {"uri": "s3://kwok-smoke/runs"},
        "resources": {"sft": gpu, "sample": gpu, "score": gpu, "dpo": gpu, "evaluate": gpu,
                      "consistency": {"gpus": 0, "cpu": "1", "memory": "4Gi"}},
        "scheduling": {"nodeSelector": kwok.node_selector, "tolerations": [kwok.toleration]},
    }


def test_runs_on_kwok_gpu_nodes_succeed_with_their_stage_metrics(
        crd, k8s_api, kube_env, namespace, kwok_factory, wait_until, tmp_path):
    stages = load_stages(CREAM_STAGES)
    for stage in stages:  # quick stages: the test is about the flow, not the timing
        stage["spec"]["delay"] = {"durationMilliseconds": 200, "jitterDurationMilliseconds": 400}
    kwok = kwok_factory(nodes=3, gpus_per_node=2, stages=stages)
    creations = JobCreations(k8s_api, namespace).start()
    op = OperatorProcess(kube_env, namespace, tmp_path, "s3://kwok-smoke/runs").start()
    custom = client.CustomObjectsApi(k8s_api)
    try:
        names = [f"kwok-{i}" for i in range(RUNS)]
        for name in names:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "CreamRun",
                "metadata": {"name": name}, "spec": _spec(kwok)})

        def all_final():
            items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                         PLURAL)["items"]
            final = [r for r in items if (r.get("status") or {}).get("phase")
                     in ("Succeeded", "Failed")]
            return items if len(final) == RUNS else None

        try:
            runs = wait_until(all_final, 150, f"{RUNS} CreamRuns on kwok nodes to finish",
                              interval=1)
        except AssertionError:
            raise AssertionError(f"operator log:\n{op.log_text()[-4000:]}") from None
        metrics_text = op.metrics_text()
    finally:
        op.stop()
        creations.stop()

    for run in runs:
        status = run["status"]
        assert status["phase"] == "Succeeded", status
        # 7 stages: sft, sample, score of M1 and M0, consistency, dpo, evaluate
        assert len(status["steps"]) == 7, status["steps"]
        result = {r["iteration"]: r for r in status["results"]}[1]
        # The figures kwok's Stage derived for this run's Pods reached the status.
        assert 0.5 <= result["consistencyRate"] < 0.9, result
        assert result["pairs"] + result["dropped"] == 16, result
        assert set(result["accuracy"]) == set(TASKS), result
        assert all(0 <= a < 1 for a in result["accuracy"].values()), result
        assert status["consistencyRate"] == result["consistencyRate"]
        name = run["metadata"]["name"]
        line = re.search(rf'^cream_consistency_rate{{[^}}]*run="{name}"[^}}]*}} (\S+)$',
                         metrics_text, re.M)
        assert line and float(line.group(1)) == pytest.approx(result["consistencyRate"])
    # Figures differ between runs: they come from each run's own Pods.
    assert len({r["status"]["consistencyRate"] for r in runs}) > 1

    # Every stage Pod ran on a kwok node, GPU stages with a GPU; each Job was created once.
    pods = client.CoreV1Api(k8s_api).list_namespaced_pod(namespace).items
    assert len(pods) == RUNS * 7
    assert {p.spec.node_name for p in pods} <= set(kwok.node_names)
    for pod in pods:
        gpus = (pod.spec.containers[0].resources.limits or {}).get("nvidia.com/gpu")
        stage = pod.metadata.labels[f"{GROUP}/stage"]
        assert gpus == ("1" if stage in GPU_STAGES else None), (stage, gpus)
    assert len(creations.uids) == RUNS * 7
    assert all(len(uids) == 1 for uids in creations.uids.values()), creations.uids
