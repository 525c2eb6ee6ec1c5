"""The node agent serves the kubelet's container-log endpoint (kubeharness/kubeletlogs.py), so
`kubectl logs` works through the real API server: whole, tailed, followed."""

from __future__ import annotations

import subprocess

import pytest
from kubernetes import client

from kubeharness import binaries

pytestmark = pytest.mark.cluster

# Prints two lines, waits for the test's go-ahead, prints a third and ends.
TALKER = """\
import os, time
print("line 0"); print("line 1", flush=True)
while not os.path.exists(os.environ["GO"]):
    time.sleep(0.1)
print("line 2")
"""


def test_kubectl_logs_through_the_node_agent(kubectl, kubeconfig, namespace, k8s_api,
                                             wait_until, tmp_path):
    go = tmp_path / "go"
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "python", "command": ["python", "-c", TALKER],
            "env": [{"name": "GO", "value": str(go)}]}]}})
    wait_until(lambda: core.read_namespaced_pod("talker", namespace).status.phase == "Running",
               60, "the Pod to run")

    # -f: what is there, then what comes, until the container ends.
    follow = subprocess.Popen(
        [str(binaries.find("kubectl")), f"--kubeconfig={kubeconfig}", "logs", "-f", "talker",
         "-n", namespace], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follow.stdout.readline() == "line 0\n"
        assert follow.stdout.readline() == "line 1\n"
        assert follow.poll() is None  # still following a container that still runs
        go.touch()
        rest, err = follow.communicate(timeout=60)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert rest == "line 2\n"

    wait_until(lambda: core.read_namespaced_pod("talker", namespace).status.phase
               == "Succeeded", 60, "the Pod to finish")
    assert kubectl("logs", "talker", "-n", namespace).stdout == "line 0\nline 1\nline 2\n"
    assert kubectl("logs", "--tail=2", "talker", "-n", namespace).stdout == "line 1\nline 2\n"
    assert kubectl("logs", "--limit-bytes=9", "talker", "-n", namespace).stdout == "line 0\nli"
    previous = kubectl("logs", "--previous", "talker", "-n", namespace, check=False)
    assert previous.returncode != 0 and "previous terminated container" in previous.stderr
    missing = kubectl("logs", "talker", "-c", "nope", "-n", namespace, check=False)
    assert missing.returncode != 0 and "nope" in missing.stderr
