"""Pod networking on the node agents: an address per Pod, a hostname per container, and the
names of a headless Service's Pods, across two Nodes (what torchrun's rendezvous relies on)."""

from __future__ import annotations

import ipaddress

import pytest
from kubernetes import client

from kubeharness import podnet
from kubeharness.process import free_port
from kubeharness.testing import PY, condition, job_manifest, job_pods, wait_job_finished

# Each of the two Pods listens on the same port on its own address, connects to the other by its
# DNS name, sends its hostname and prints what it got.
PEER = """
import os, socket, time
me, job, port = int(os.environ["JOB_COMPLETION_INDEX"]), os.environ["JOB"], int(os.environ["PORT"])
host = socket.gethostname()
ip = socket.gethostbyname(host)
server = socket.create_server((ip, port))
peer = f"{job}-{1 - me}.{job}"
deadline = time.monotonic() + 60
while True:
    try:
        out = socket.create_connection((peer, port), timeout=2)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.2)
out.sendall(host.encode())
out.close()
conn, _ = server.accept()
fqdn = socket.gethostbyname(f"{peer}.{os.environ['NS']}.svc.cluster.local")
print(host, os.environ["HOSTNAME"], ip, socket.gethostbyname(peer), fqdn, conn.recv(100).decode())
"""


def _pod(name, ip, labels, phase="Running", ready=True, **spec):
    return {"metadata": {"name": name, "namespace": "ns", "labels": labels}, "spec": spec,
            "status": {"podIP": ip, "phase": phase,
                       "conditions": [{"type": "Ready", "status": str(ready)}]}}


def test_hosts_file_has_the_pods_own_name_and_the_headless_services_records():
    job = {"job-name": "j"}
    me = _pod("j-0-abcde", "127.100.0.2", job, hostname="j-0", subdomain="j")
    pods = [me, _pod("j-1-fghij", "127.101.0.2", job, ready=False, hostname="j-1", subdomain="j"),
            _pod("j-2-done", "127.101.0.7", job, phase="Succeeded", hostname="j-2",
                 subdomain="j"),
            _pod("web-1", "127.101.0.8", {"app": "web"}, ready=False),
            _pod("web-2", "127.101.0.9", {"app": "web"})]
    services = [
        {"metadata": {"name": "j", "namespace": "ns"},
         "spec": {"clusterIP": "None", "selector": job, "publishNotReadyAddresses": True}},
        {"metadata": {"name": "web", "namespace": "ns"},
         "spec": {"clusterIP": "None", "selector": {"app": "web"}}},
        {"metadata": {"name": "api", "namespace": "ns"},
         "spec": {"clusterIP": "10.0.0.7", "selector": {"app": "web"}}},
    ]
    text = podnet.hosts_file(me, "127.100.0.2", services, pods)
    lines = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    assert ["127.0.0.1", "localhost"] in lines
    assert ["127.100.0.2", "j-0.j.ns.svc.cluster.local", "j-0"] in lines
    # publishNotReadyAddresses: j-1 has its record before it is ready (torchrun needs that)
    assert ["127.101.0.2", "j-1.j.ns.svc.cluster.local", "j-1.j.ns.svc", "j-1.j.ns",
            "j-1.j"] in lines
    assert ["127.101.0.2", "j.ns.svc.cluster.local", "j.ns.svc", "j.ns", "j"] in lines
    assert "127.101.0.7" not in text  # finished Pods leave DNS
    assert "127.101.0.8" not in text  # not ready, and the Service does not publish those
    assert ["127.101.0.9", "web.ns.svc.cluster.local", "web.ns.svc", "web.ns", "web"] in lines
    assert "api" not in text  # a ClusterIP Service: no Service networking here


def test_addresses_come_from_the_nodes_block_and_are_not_reused():
    addresses = podnet.PodAddresses(podnet.node_block(1))
    assert addresses.node_ip == "127.101.0.1"
    first, second = addresses.next(), addresses.next()
    assert (first, second) == ("127.101.0.2", "127.101.0.3")
    assert podnet.node_block(0) == podnet.FIRST_BLOCK


def test_rewrite_in_place_keeps_the_inode_and_never_empties_the_file(tmp_path):
    path = tmp_path / "hosts"
    podnet.rewrite_in_place(path, "a long first version\n")
    inode = path.stat().st_ino
    podnet.rewrite_in_place(path, "short\n")
    assert path.stat().st_ino == inode
    assert path.read_text().strip() == "short"


@pytest.mark.cluster
def test_indexed_job_pods_on_two_nodes_reach_each_other_by_name(
        k8s_api, namespace, node_agent, second_node):
    core = client.CoreV1Api(k8s_api)
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "pair"},
        "spec": {"clusterIP": "None", "selector": {"batch.kubernetes.io/job-name": "pair"},
                 "publishNotReadyAddresses": True}})
    port = free_port()
    # More than half a node's 16 CPUs each: the scheduler must use both nodes.
    job = job_manifest("pair", [PY, "-c", PEER], completions=2, parallelism=2,
                       completionMode="Indexed", pod_spec={"subdomain": "pair"})
    main = job["spec"]["template"]["spec"]["containers"][0]
    main["resources"] = {"requests": {"cpu": "9"}}
    main["env"] = [{"name": "JOB", "value": "pair"}, {"name": "PORT", "value": str(port)},
                   {"name": "NS", "value": namespace}]
    client.BatchV1Api(k8s_api).create_namespaced_job(namespace, job)

    done = wait_job_finished(k8s_api, namespace, "pair", timeout=180)
    pods = sorted(job_pods(k8s_api, namespace, "pair"),
                  key=lambda p: p["spec"]["hostname"])
    logs = [node_agent.log(p).read_text() for p in pods]
    assert condition(done, "Complete"), f"{done['status']}\n" + "\n".join(logs)
    assert {p["spec"]["nodeName"] for p in pods} == {node_agent.name, second_node}
    ips = [p["status"]["podIP"] for p in pods]
    assert len(set(ips)) == 2
    for pod, ip in zip(pods, ips, strict=True):
        node = core.read_node(pod["spec"]["nodeName"])
        block = ipaddress.ip_network(node.spec.pod_cidr)
        assert ipaddress.ip_address(ip) in block
        assert pod["status"]["hostIP"] == node.status.addresses[0].address
    for i, log in enumerate(logs):
        host, env_host, own, peer, fqdn, got = log.split()
        assert host == env_host == f"pair-{i}"  # the container's hostname is the Pod's
        assert own == ips[i]  # its hostname resolves to its reported podIP
        assert peer == fqdn == ips[1 - i]  # the peer's DNS names resolve to the peer's podIP
        assert got == f"pair-{1 - i}"  # and the peer reached it there, on the same port
