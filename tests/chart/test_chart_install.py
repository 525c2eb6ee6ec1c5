"""`helm install` on the real control plane, end to end: the chart's Deployment runs the operator
from the operator image `make images` built (the local node agent runs the Pod from the image's
root filesystem, as its user, with the chart's ServiceAccount token, so the real API server
enforces the chart's RBAC), a CreamRun of one iteration succeeds with every stage Job run from the
built stages image (its CPU variant) and artifacts in the real S3 server through the chart's
Secret, `helm test` passes, and a real Prometheus scraping the operator answers every query of
the Grafana dashboard."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import pytest
import yaml
from chartkit import CHART, ROOT, load_dashboard_queries
from kubernetes import client
from promql import substitute

from cream_operator.spec import GROUP, PLURAL, VERSION
from kubeharness.process import free_port

pytestmark = pytest.mark.cluster

RELEASE = "cream"
RUN_TIMEOUT = 1200  # eight stages of the tiny model on two CPU cores, with margin


def one_iteration_of_tiny() -> dict:
    doc = yaml.safe_load((ROOT / "examples" / "tiny.yaml").read_text())
    doc["spec"]["iterations"] = 1
    doc["spec"]["data"]["prompts"] = doc["spec"]["data"]["prompts"][:1]
    return doc


def answers(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.read().decode()
    except OSError:
        return None


@pytest.fixture
def helm_run(kube_env):
    """The pinned helm (kube_env puts it first on PATH) against the test cluster."""
    def run(*args: str, check: bool = True):
        proc = subprocess.run(["helm", *args], env=kube_env, capture_output=True, text=True,
                              timeout=600)
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    return run


def test_helm_install_runs_a_creamrun_and_the_dashboard_answers(
        tmp_path, helm_run, kubectl, namespace, s3, k8s_api, prometheus_factory, wait_until,
        node_agent, built_images):
    bucket = s3.make_bucket()
    health, metrics = free_port(), free_port()
    operator_image, stages_image = (dict(zip(("repository", "tag"), built_images[name]
                                             .rsplit(":", 1), strict=True))
                                    for name in ("operator", "stages"))
    values = {
        "image": operator_image,
        "watchNamespaces": [namespace],
        # The node agent runs every Pod on the host's loopback: free ports, no cluster DNS.
        "ports": {"health": health, "metrics": metrics},
        "tests": {"host": "127.0.0.1"},
        "s3": {"storageUri": f"s3://{bucket}/runs", "createSecret": True,
               "accessKey": s3.access_key, "secretKey": s3.secret_key,
               "endpoint": s3.endpoint, "region": s3.region},
        "stages": {"defaultGpus": 0, "image": stages_image},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm_run("install", RELEASE, str(CHART), "--namespace", namespace, "--values",
             str(values_file), "--wait", "--timeout", "180s")
    custom = client.CustomObjectsApi(k8s_api)
    core = client.CoreV1Api(k8s_api)

    def operator_log() -> str:
        pods = core.list_namespaced_pod(
            namespace, label_selector="app.kubernetes.io/component=operator").items
        return "\n".join(node_agent.log(p).read_text(errors="replace")[-4000:]
                         for p in pods if node_agent.log(p).exists())

    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{health}/healthz") is not None, 60,
                   "the operator's health endpoint")
        # JSON, not YAML: kubectl reads YAML 1.1, where the key `n` (spec.sampling.n) is false.
        kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(one_iteration_of_tiny()))

        def finished():
            run = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tiny")
            status = run.get("status") or {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        try:
            status = wait_until(finished, RUN_TIMEOUT, "CreamRun tiny to finish", interval=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\noperator log:\n{operator_log()}") from None
        assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-4000:]
        # Every Pod ran from its image (the node agent records each container it ran from one).
        pods = core.list_namespaced_pod(namespace).items
        assert {p.spec.containers[0].image for p in pods} == {
            built_images["operator"], built_images["stages"]}, [p.metadata.name for p in pods]
        assert all(json.loads(node_agent.log(p).with_suffix(".image.json").read_text())["image"]
                   == p.spec.containers[0].image for p in pods)

        proc = helm_run("test", RELEASE, "--namespace", namespace)
        assert "Phase:          Succeeded" in proc.stdout, proc.stdout
        # Its output, from the node agent (the harness has no kubelet log endpoint for --logs).
        (log,) = node_agent.pods_dir.glob(f"{namespace}_{RELEASE}-cream-operator-test-endpoints_*/"
                                          "check.log")
        assert "/healthz: 200" in log.read_text() and "/metrics: 200" in log.read_text()

        prom = prometheus_factory(targets=[f"127.0.0.1:{metrics}"])
        prom.wait_for_value(f'cream_consistency_rate{{namespace="{namespace}",run="tiny"}}', 60)
        wait_until(lambda: prom.query("count_over_time(cream_runs[1m])") and
                   float(prom.query("min(count_over_time(cream_runs[1m]))")[0]["value"][1]) >= 3,
                   60, "three scrapes of the operator")
        variables = {"namespace": namespace, "run": "tiny", "__rate_interval": "1m",
                     "__interval": "15s", "__range": "1h", "datasource": "prometheus"}
        for where, expr in load_dashboard_queries():
            result = prom.query(substitute(expr, variables))
            if "cream_stage_failures_total" in expr:
                continue  # nothing failed: no series, and the query was accepted
            if "cream_judge_" in expr or "cream_reward_model_" in expr:
                # examples/tiny.yaml has no judge or reward-model step: no series.
                # test_dashboard.py's Grafana test runs a schedule with both and asserts these
                # panels answer.
                continue
            assert result, f"{where}: no data for {substitute(expr, variables)}"
        namespaces = {r["metric"]["namespace"]
                      for r in prom.query("count by (namespace) (cream_consistency_rate)")}
        assert namespace in namespaces  # the dashboard's namespace variable
    finally:
        # Deleted while the operator still runs, in case a run carries kopf's finalizer.
        kubectl("delete", "creamrun", "tiny", "-n", namespace, "--ignore-not-found",
                "--timeout=60s", check=False)
        helm_run("uninstall", RELEASE, "--namespace", namespace, "--wait", check=False)
