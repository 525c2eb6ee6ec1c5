"""`cream get` and `cream logs` against the real control plane: a tiny CreamRun through the
operator (suspended once its baseline is evaluated), read back the way a user would, with nothing
but a kubeconfig (the CLI runs as its own process, like kubectl). Pod output comes through the API
server's pods/log, which the node agent serves like a kubelet (kubeharness/kubeletlogs.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kubernetes import client

# The operator fixtures of the end-to-end test: the CRD, a bucket, the S3 Secret, the operator.
from test_operator import (  # noqa: F401 - fixtures, used by name
    _tiny,
    bucket,
    crd,
    operator,
    s3_secret,
)

from cream_operator.local import format_table
from cream_operator.spec import GROUP, PLURAL, VERSION, IterationResult
from kubeharness.controlplane import ControlPlane

pytestmark = pytest.mark.cluster

CREAM = str(Path(sys.executable).with_name("cream"))
RUN_TIMEOUT = 900  # the tiny model's SFT and baseline evaluation on two CPU cores, with margin


def cream(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CREAM, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _run(k8s_api, namespace: str) -> dict:
    return client.CustomObjectsApi(k8s_api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "tiny")


def _step_log(k8s_api, node_agent, namespace: str, job: str) -> str:
    """What the stage's process wrote, read from the node agent's file (the ground truth)."""
    (pod,) = client.CoreV1Api(k8s_api).list_namespaced_pod(
        namespace, label_selector=f"job-name={job}").items
    return node_agent.log(pod).read_text()


def test_cream_get_and_logs_follow_a_run(
        k8s_api, kubectl, kube_env, namespace, node_agent, wait_until, tmp_path,
        operator):  # noqa: F811 - the fixture imported above
    # JSON, not YAML: kubectl reads YAML 1.1, where the key `n` (spec.sampling.n) is false.
    one = _tiny(iterations=1)
    one["spec"]["data"]["prompts"] = one["spec"]["data"]["prompts"][:1]
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(one))
    env = {**kube_env}  # KUBECONFIG set, as a user's shell would have it

    # `cream logs` while the SFT stage runs: it follows the Pod's output until the stage ends.
    def sft_running():
        status = _run(k8s_api, namespace).get("status") or {}
        assert status.get("phase") != "Failed", json.dumps(status, indent=1)[-3000:]
        return next((s for s in status.get("steps", [])
                     if s["key"] == "iter-0/sft" and s["phase"] == "Running"), None)

    wait_until(sft_running, 300, "the sft stage to run", interval=0.5)
    got = cream("get", "tiny", "-n", namespace, env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith(f"CreamRun {namespace}/tiny: Running")
    assert "running iter-0/sft" in got.stdout.splitlines()[0]

    followed = cream("logs", "tiny", "-n", namespace, env=env, timeout=600)
    assert followed.returncode == 0, followed.stderr
    # It names the stage and Pod it follows (sft, unless sft ended while the CLI started).
    key, pod_name = re.fullmatch(r"==> (\S+): Pod (\S+) <==", followed.stderr.strip()).groups()
    steps = {s["key"]: s for s in _run(k8s_api, namespace)["status"]["steps"]}
    (pod,) = client.CoreV1Api(k8s_api).list_namespaced_pod(
        namespace, label_selector=f"job-name={steps[key]['job']}").items
    assert pod.metadata.name == pod_name
    # It returned because the stage's process ended, with every byte the process wrote.
    wait_until(lambda: client.CoreV1Api(k8s_api).read_namespaced_pod(
        pod_name, namespace).status.phase in ("Succeeded", "Failed"), 30, "the Pod to end")
    written = node_agent.log(pod).read_text()
    assert written.strip() and followed.stdout == written

    # Once the baseline is evaluated, suspend the run: what runs finishes, nothing new starts.
    def status_now() -> dict:
        return _run(k8s_api, namespace).get("status") or {}

    try:
        wait_until(lambda: any(r["iteration"] == 0 and r.get("accuracy")
                               for r in status_now().get("results", [])),
                   RUN_TIMEOUT, "the baseline evaluation", interval=2)
        client.CustomObjectsApi(k8s_api).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "tiny", {"spec": {"suspend": True}})
        status = wait_until(lambda: (s := status_now()).get("phase") == "Suspended" and not any(
            step["phase"] == "Running" for step in s["steps"]) and s, 600,
            "the run to be suspended with no stage running", interval=2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{operator.log_text()[-4000:]}") from None

    # `cream get RUN`: the header and exactly the table `cream run` prints, from the status.
    got = cream("get", "tiny", "--namespace", namespace, env=env)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0].startswith(f"CreamRun {namespace}/tiny: Suspended, iteration ")
    results = [IterationResult.model_validate(r) for r in status["results"]]
    table = format_table(results)
    assert "\n".join(lines[-len(table.splitlines()):]) == table
    header, rule, *rows = table.splitlines()
    assert header.split() == ["iteration", "consistency", "pairs", "dropped", "arc_challenge",
                              "arc_easy", "gsm8k", "lm_arc_easy", "openbookqa", "siqa"]
    baseline = next(r for r in status["results"] if r["iteration"] == 0)
    row = next(r.split() for r in rows if r.split()[0] == "0")
    assert row[1:4] == ["-", "-", "-"]  # the SFT model's baseline: accuracy only
    assert row[4:] == [f"{baseline['accuracy'][t]:.3f}" for t in header.split()[4:]]

    # Every run of the namespace, and of every namespace; the kubeconfig as a flag.
    flag_env = {k: v for k, v in env.items() if k != "KUBECONFIG"}
    kubeconfig = env["KUBECONFIG"]
    listed = cream("get", "-n", namespace, "--kubeconfig", kubeconfig, env=flag_env)
    assert listed.returncode == 0 and listed.stdout.startswith(f"CreamRun {namespace}/tiny:")
    every = cream("get", "-A", "--kubeconfig", kubeconfig, env=flag_env)
    assert every.returncode == 0 and f"CreamRun {namespace}/tiny: Suspended" in every.stdout

    # No -n: the context's namespace, as kubectl.
    own = tmp_path / "kubeconfig"
    doc = yaml.safe_load(Path(kubeconfig).read_text())
    for ctx in doc["contexts"]:
        ctx["context"]["namespace"] = namespace
    own.write_text(yaml.safe_dump(doc))
    got = cream("get", "tiny", env={**flag_env, "KUBECONFIG": str(own)})
    assert got.returncode == 0 and got.stdout.startswith(f"CreamRun {namespace}/tiny:"), got

    # Nothing running: the last stage that started, and any stage by its key.
    last = cream("logs", "tiny", "-n", namespace, env=env)
    assert last.returncode == 0, last.stderr
    key = re.search(r"no stage is running; the last one to start: (\S+) \(Succeeded\)",
                    last.stderr).group(1)
    steps = {s["key"]: s for s in status["steps"]}
    assert steps[key]["startTime"] == max(s["startTime"] for s in status["steps"])
    assert last.stdout == _step_log(k8s_api, node_agent, namespace, steps[key]["job"])
    one_stage = cream("logs", "tiny", "-n", namespace, "--stage", "iter-0/sft", "--no-follow",
                      env=env)
    assert one_stage.returncode == 0, one_stage.stderr
    assert one_stage.stdout == _step_log(k8s_api, node_agent, namespace,
                                         steps["iter-0/sft"]["job"])

    # What is not there is named, with the fix.
    missing = cream("get", "nope", "-n", namespace, env=env)
    assert missing.returncode == 1
    assert f'CreamRun "nope" in namespace "{namespace}" not found' in missing.stderr
    unknown = cream("logs", "tiny", "-n", namespace, "--stage", "iter-9/dpo", env=env)
    assert unknown.returncode == 1 and "no stage 'iter-9/dpo'" in unknown.stderr
    assert "iter-0/sft, iter-0/evaluate" in unknown.stderr  # the stages it could have been

    kubectl("delete", "creamrun", "tiny", "-n", namespace, "--timeout=60s")


def test_cream_get_and_logs_name_a_missing_crd_or_kubeconfig(tmp_path):
    """On a control plane without the CRD (its own, so the session's CRD stays), and with no
    kubeconfig at all."""
    cp = ControlPlane(tmp_path / "bare").start()
    try:
        env = cp.env()
        for args in (("get",), ("get", "tiny"), ("logs", "tiny")):
            got = cream(*args, env=env)
            assert got.returncode == 1, got
            assert ("the CreamRun CRD (creamruns.cream.dev) is not installed in this cluster"
                    in got.stderr), got.stderr
            assert "kubectl apply -f crds/cream.dev_creamruns.yaml" in got.stderr
    finally:
        cp.stop()
    nowhere = {k: v for k, v in env.items() if not k.startswith("KUBERNETES_")}
    got = cream("get", env={**nowhere, "KUBECONFIG": str(tmp_path / "absent")})
    assert got.returncode == 1
    assert f"no kubeconfig at {tmp_path / 'absent'}" in got.stderr and "--kubeconfig" in got.stderr
