"""Pods on the node agent: scheduling by GPU, deletion, env and volumes, termination messages."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from kubernetes import client

from kubeharness.podrun import KEEP
from kubeharness.testing import (
    PY,
    container,
    get_pod,
    pod_manifest,
    terminated,
    wait_pod_phase,
    wait_until,
)

pytestmark = pytest.mark.cluster


def _create(k8s_api, ns: str, manifest: dict) -> None:
    client.CoreV1Api(k8s_api).create_namespaced_pod(ns, manifest)


def _gpu_pod(name: str, gpus: int) -> dict:
    pod = pod_manifest(name, [PY, "-c", "print('gpu job')"])
    pod["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return pod


def test_gpu_requests_are_scheduled_against_node_capacity(k8s_api, namespace, node_agent):
    _create(k8s_api, namespace, _gpu_pod("fits", 1))
    _create(k8s_api, namespace, _gpu_pod("too-big", node_agent.gpus + 1))

    pod = wait_pod_phase(k8s_api, namespace, "fits", ("Succeeded",))
    assert pod["spec"]["nodeName"] == node_agent.name

    def unschedulable():
        pod = get_pod(k8s_api, namespace, "too-big")
        for c in pod["status"].get("conditions") or []:
            if c["type"] == "PodScheduled" and c["status"] == "False":
                return pod, c
        return None

    pod, cond = wait_until(unschedulable, 60, "the scheduler to give up on too-big")
    assert cond["reason"] == "Unschedulable"
    assert "nvidia.com/gpu" in cond["message"]
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")


def test_deleting_a_running_pod_kills_its_process(k8s_api, namespace, node_agent):
    code = "import os, time; print(os.getpid(), flush=True); time.sleep(600)"
    _create(k8s_api, namespace, pod_manifest("sleeper", [PY, "-c", code]))
    pod = wait_pod_phase(k8s_api, namespace, "sleeper", ("Running",))
    log = node_agent.log(pod)
    pid = int(wait_until(lambda: log.exists() and log.read_text().strip(), 30, "the pid"))
    os.kill(pid, 0)  # alive

    client.CoreV1Api(k8s_api).delete_namespaced_pod("sleeper", namespace)

    wait_until(lambda: get_pod(k8s_api, namespace, "sleeper") is None, 60, "the Pod to go")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_secret_env_and_configmap_volume_reach_the_process(k8s_api, namespace):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "settings"}, "data": {"app.yaml": "answer: 42\n"}})
    code = textwrap.dedent("""
        import os
        with open('/etc/app/app.yaml') as f:
            cfg = f.read().strip()
        msg = f"{os.environ['TOKEN']}|{cfg}|{os.environ['POD']}|{os.environ['ROLE']}"
        open('/dev/termination-log', 'w').write(msg)
    """)
    pod = pod_manifest("envs", [PY, "-c", code], volumes=[
        {"name": "cfg", "configMap": {"name": "settings"}}])
    pod["metadata"]["labels"] = {"role": "worker"}
    pod["spec"]["containers"][0].update(
        env=[
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "ROLE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['role']"}}},
        ],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/app", "readOnly": True}],
    )
    _create(k8s_api, namespace, pod)

    pod = wait_pod_phase(k8s_api, namespace, "envs", ("Succeeded", "Failed"))
    state = terminated(pod)
    assert state["exitCode"] == 0, state
    assert state["message"] == "s3cr3t|answer: 42|envs|worker"


def test_termination_messages_from_file_and_from_logs(k8s_api, namespace):
    from_file = pod_manifest("msg-file", [PY, "-c", (
        "open('/tmp/why', 'w').write('done: 7 items')")])
    from_file["spec"]["containers"][0]["terminationMessagePath"] = "/tmp/why"
    from_logs = pod_manifest("msg-logs", [PY, "-c", (
        "import sys; print('loading'); print('boom: no data', flush=True); sys.exit(2)")])
    from_logs["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    _create(k8s_api, namespace, from_file)
    _create(k8s_api, namespace, from_logs)

    done = terminated(wait_pod_phase(k8s_api, namespace, "msg-file", ("Succeeded",)))
    assert done["message"] == "done: 7 items" and done["reason"] == "Completed"
    failed = terminated(wait_pod_phase(k8s_api, namespace, "msg-logs", ("Failed",)))
    assert failed["exitCode"] == 2 and failed["reason"] == "Error"
    assert failed["message"].splitlines()[-1] == "boom: no data"


def test_missing_command_fails_the_pod_not_the_agent(k8s_api, namespace):
    _create(k8s_api, namespace, pod_manifest("nocmd", ["no-such-program-kubeharness"]))

    pod = wait_pod_phase(k8s_api, namespace, "nocmd", ("Failed",))
    state = terminated(pod)
    assert state["reason"] == "StartError" and state["exitCode"] == 128
    assert "executable file not found" in state["message"]
    # the agent is still serving
    _create(k8s_api, namespace, pod_manifest("after", [PY, "-c", "pass"]))
    wait_pod_phase(k8s_api, namespace, "after", ("Succeeded",))


def test_init_containers_run_first_and_share_volumes(k8s_api, namespace):
    pod = pod_manifest("init", [PY, "-c", (
        "open('/dev/termination-log', 'w').write(open('/work/data.txt').read())")],
        volumes=[{"name": "work", "emptyDir": {}}])
    mount = [{"name": "work", "mountPath": "/work"}]
    pod["spec"]["containers"][0]["volumeMounts"] = mount
    pod["spec"]["initContainers"] = [
        container([PY, "-c", "open('/work/data.txt', 'w').write('first')"], name="one",
                  volumeMounts=mount),
        container([PY, "-c", "open('/work/data.txt', 'a').write(',second')"], name="two",
                  volumeMounts=mount),
    ]
    _create(k8s_api, namespace, pod)

    pod = wait_pod_phase(k8s_api, namespace, "init", ("Succeeded", "Failed"))
    assert terminated(pod)["message"] == "first,second"
    assert [s["state"]["terminated"]["exitCode"] for s in pod["status"]["initContainerStatuses"]
            ] == [0, 0]


def test_service_account_token_gives_in_cluster_access(k8s_api, namespace):
    client.CoreV1Api(k8s_api).create_namespaced_service_account(
        namespace, {"metadata": {"name": "runner"}})
    code = textwrap.dedent("""
        from kubernetes import client, config
        config.load_incluster_config()
        review = client.AuthenticationV1Api().create_self_subject_review({})
        open('/dev/termination-log', 'w').write(review.status.user_info.username)
    """)
    _create(k8s_api, namespace, pod_manifest("incluster", [PY, "-c", code],
                                             serviceAccountName="runner"))

    pod = wait_pod_phase(k8s_api, namespace, "incluster", ("Succeeded", "Failed"))
    assert terminated(pod)["message"] == f"system:serviceaccount:{namespace}:runner"


def test_a_volume_over_tmp_hides_neither_other_volumes_nor_the_host(k8s_api, namespace):
    # the agent's state (the volumes' sources) lives under /tmp in pytest: mounting an emptyDir
    # at /tmp must not hide the configMap mounted below it
    client.CoreV1Api(k8s_api).create_namespaced_config_map(namespace, {
        "metadata": {"name": "conf"}, "data": {"k": "v"}})
    # a name of the test's own: the host's /tmp may hold anything, a "scratch" of another's too
    mark = f"written-by-{namespace}"
    code = (f"import os; open('/tmp/{mark}', 'w').write('x'); "
            "open('/dev/termination-log', 'w').write(open('/tmp/conf/k').read() + "
            "','.join(sorted(os.listdir('/tmp'))))")
    pod = pod_manifest("tmpmount", [PY, "-c", code], volumes=[
        {"name": "tmp", "emptyDir": {}}, {"name": "conf", "configMap": {"name": "conf"}}])
    pod["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "conf", "mountPath": "/tmp/conf"}, {"name": "tmp", "mountPath": "/tmp"}]
    _create(k8s_api, namespace, pod)

    pod = wait_pod_phase(k8s_api, namespace, "tmpmount", ("Succeeded", "Failed"))
    # The project's own checkout and venv, when they live under /tmp, are mounted back too.
    kept = {Path(p).relative_to("/tmp").parts[0] for p in KEEP if p.startswith("/tmp/")}
    listed = terminated(pod)["message"]
    assert listed[0] == "v" and sorted(listed[1:].split(",")) == sorted({"conf", mark, *kept})
    assert not os.path.exists(f"/tmp/{mark}")  # written to the Pod's emptyDir, not the host
