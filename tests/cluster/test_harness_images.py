"""Pods whose image `make images` built run from it: its root filesystem, Env, entrypoint,
working directory and user, under the Pod's overrides (kubeharness/images.py)."""

from __future__ import annotations

import pytest
from kubernetes import client

from kubeharness.testing import get_pod, pod_manifest, wait_pod_phase, wait_until

pytestmark = pytest.mark.cluster


def _pod(name: str, image: str, command: list[str] | None, args: list[str] | None = None,
         **spec) -> dict:
    pod = pod_manifest(name, command or [], **spec)
    c = pod["spec"]["containers"][0]
    c["image"] = image
    if not command:
        del c["command"]
    if args is not None:
        c["args"] = args
    return pod


def _run(k8s_api, namespace: str, node_agent, pod: dict, phase: str = "Succeeded") -> tuple:
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)
    done = wait_pod_phase(k8s_api, namespace, pod["metadata"]["name"], ("Succeeded", "Failed"),
                          timeout=120)
    log = node_agent.log(done).read_text()
    assert done["status"]["phase"] == phase, log
    return done, log


def test_a_pod_runs_its_images_entrypoint_as_its_user_in_its_workdir(
        k8s_api, namespace, node_agent, built_images):
    operator = built_images["operator"]
    # No command: the image's ENTRYPOINT (python -m cream_operator) with the Pod's args.
    _, log = _run(k8s_api, namespace, node_agent, _pod("entrypoint", operator, None, ["--help"]))
    assert "usage:" in log and "operator" in log

    script = ("import os, sys, shutil; print(os.getuid(), os.getgid(), os.getcwd(), "
              "os.environ['HOME'], sys.executable, shutil.which('torchrun'), "
              "os.path.exists('/opt/venv/bin/kopf'), os.path.exists('" + str(node_agent.pods_dir)
              + "'), len(open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()) > 0)")
    _, log = _run(k8s_api, namespace, node_agent, _pod("who", operator, ["python", "-c", script]))
    # The image's USER 10001:10001, WORKDIR /tmp, ENV HOME and PATH (/opt/venv first); its own
    # root filesystem: kopf there, the node's state directory and the project's venv not; the
    # ServiceAccount token where in-cluster config reads it, through the image's /var/run -> /run
    # link (followed inside the image, never to the host's /run).
    assert log.split() == ["10001", "10001", "/tmp", "/tmp", "/opt/venv/bin/python", "None",
                           "True", "False", "True"], log


def test_the_pods_security_context_and_volumes_apply_inside_the_image(
        k8s_api, namespace, node_agent, built_images):
    script = """
import os, pathlib
print(os.getuid(), os.getgid())
pathlib.Path('/scratch/out').write_text('kept')
try:
    open('/tmp/written', 'w')  # world-writable in the image: only the read-only root refuses
except OSError as e:
    print('root', e.strerror)
print(open('/etc/hostname-test/h').read())
"""
    pod = _pod("restricted", built_images["operator"], ["python", "-c", script],
               securityContext={"runAsUser": 4242, "runAsGroup": 4343, "runAsNonRoot": True},
               volumes=[{"name": "scratch", "emptyDir": {}},
                        {"name": "info", "downwardAPI": {"items": [
                            {"path": "h", "fieldRef": {"fieldPath": "metadata.name"}}]}}])
    c = pod["spec"]["containers"][0]
    c["securityContext"] = {"readOnlyRootFilesystem": True}
    c["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"},
                         {"name": "info", "mountPath": "/etc/hostname-test"}]
    done, log = _run(k8s_api, namespace, node_agent, pod)
    assert log.split("\n")[:3] == ["4242 4343", "root Read-only file system", "restricted"], log
    pod_dir = node_agent.log(done).parent
    assert (pod_dir / "volumes" / "scratch" / "out").read_text() == "kept"

    # runAsNonRoot with a user of root: refused before anything runs, as the kubelet refuses it
    # (the container waits in CreateContainerConfigError).
    pod = _pod("as-root", built_images["operator"], ["python", "-c", "print('ran')"],
               securityContext={"runAsUser": 0, "runAsNonRoot": True})
    client.CoreV1Api(k8s_api).create_namespaced_pod(namespace, pod)

    def refused():
        pod = get_pod(k8s_api, namespace, "as-root")
        for cs in pod["status"].get("containerStatuses") or []:
            if cs["state"].get("waiting", {}).get("reason") == "CreateContainerConfigError":
                return pod, cs["state"]["waiting"]["message"]
        return None

    pod, message = wait_until(refused, 60, "the runAsNonRoot refusal")
    assert message == "container has runAsNonRoot and image will run as root"
    assert not node_agent.log(pod).exists()
