"""Pod addresses and names on the local node agent: what a CNI plugin and the cluster DNS give Pods.

Addresses: every node agent owns a block of the loopback range (127.0.0.0/8 all reaches this
machine, with no setup), the first node 127.100.0.0/16, the next 127.101.0.0/16, and so on. The
node's InternalIP is the block's first address and each Pod gets the next free one, reported as
its podIP, so Pods on two nodes, or two Pods on one, have distinct addresses as in a real cluster.
A process that binds its Pod's address (gloo does: it binds the address its hostname resolves to)
cannot collide with another Pod's; one that binds the wildcard address still shares the host's
ports, since there is no network namespace.

Names: the kubelet gives each container a hostname (spec.hostname, else the Pod's name) and an
/etc/hosts with the Pod's own name; cluster DNS adds, for a headless Service, one record per
selected Pod: `<hostname>.<service>.<namespace>.svc.cluster.local` for Pods that set hostname and
subdomain (an Indexed Job's `<job>-<index>.<job>`), and the Service's own name for all of them.
The agent has no DNS server (it would need port 53), so it writes those records into each Pod's
/etc/hosts, with the short forms the resolver's search path (`<ns>.svc.cluster.local
svc.cluster.local cluster.local`) would complete, and rewrites the file in place as Pods and
Services change. It reads Services and Pods directly, as the EndpointSlice controller does:
EndpointSlices themselves refuse loopback addresses, so they stay empty here.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from pathlib import Path

CLUSTER_DOMAIN = "cluster.local"
FIRST_BLOCK = ipaddress.ip_network("127.100.0.0/16")

_KUBELET_HEADER = """\
# Kubernetes-managed hosts file (kubeharness node agent).
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost ip6-loopback
fe00::0\tip6-localnet
fe00::0\tip6-mcastprefix
fe00::1\tip6-allnodes
fe00::2\tip6-allrouters
"""


def node_block(index: int) -> ipaddress.IPv4Network:
    """The address block of the index-th node agent (0, 1, ...)."""
    return ipaddress.ip_network(f"127.{FIRST_BLOCK.network_address.packed[1] + index}.0.0/16")


class PodAddresses:
    """A node's addresses: its own, then one per Pod, never reused while the agent runs."""

    def __init__(self, block: str | ipaddress.IPv4Network):
        self.block = ipaddress.ip_network(block)
        hosts = self.block.hosts()
        self.node_ip = str(next(hosts))
        self._free = (str(ip) for ip in hosts)
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            try:
                return next(self._free)
            except StopIteration:
                raise RuntimeError(f"no Pod address left in {self.block}") from None


def hostname(pod: dict) -> str:
    """The container's hostname, as the kubelet sets it."""
    return (pod["spec"].get("hostname") or pod["metadata"]["name"])[:63]


def _names(name: str, namespace: str) -> list[str]:
    """A DNS name under <namespace>.svc.<domain>, fully qualified and as the search path would
    complete its short forms."""
    base = f"{name}.{namespace}.svc"
    return [f"{base}.{CLUSTER_DOMAIN}", base, f"{name}.{namespace}", name]


def _selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _published(pod: dict, service: dict) -> bool:
    """Whether the EndpointSlice controller would list the Pod as a ready endpoint."""
    status = pod.get("status") or {}
    if not status.get("podIP") or status.get("phase") in ("Succeeded", "Failed"):
        return False
    if pod["metadata"].get("deletionTimestamp"):
        return False
    if service["spec"].get("publishNotReadyAddresses"):
        return True
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in status.get("conditions") or [])


def hosts_file(pod: dict, pod_ip: str, services: list[dict], pods: list[dict]) -> str:
    """The Pod's /etc/hosts: the kubelet's lines, then what cluster DNS answers for the headless
    Services of its namespace (`services` and `pods` are that namespace's)."""
    ns = pod["metadata"]["namespace"]
    host = hostname(pod)
    lines = [_KUBELET_HEADER.rstrip("\n")]
    if subdomain := pod["spec"].get("subdomain"):
        lines.append(f"{pod_ip}\t{host}.{subdomain}.{ns}.svc.{CLUSTER_DOMAIN}\t{host}")
    else:
        lines.append(f"{pod_ip}\t{host}")
    lines.append("# headless Services (what cluster DNS would answer)")
    for svc in sorted(services, key=lambda s: s["metadata"]["name"]):
        name, spec = svc["metadata"]["name"], svc.get("spec") or {}
        if svc["metadata"].get("namespace") != ns or spec.get("clusterIP") != "None":
            continue
        selected = [p for p in pods if p["metadata"].get("namespace") == ns
                    and _selects(spec.get("selector") or {}, p["metadata"].get("labels") or {})
                    and _published(p, svc)]
        for p in sorted(selected, key=lambda p: p["metadata"]["name"]):
            ip = p["status"]["podIP"]
            if p["spec"].get("hostname") and p["spec"].get("subdomain") == name:
                lines.append(f"{ip}\t" + " ".join(_names(f"{p['spec']['hostname']}.{name}", ns)))
            lines.append(f"{ip}\t" + " ".join(_names(name, ns)))
    return "\n".join(lines) + "\n"


def rewrite_in_place(path: Path, text: str) -> None:
    """Replace a bind-mounted file's contents keeping its inode (a rename would leave the
    container's mount on the old file). Never truncated on the way: a shorter text is padded
    with newlines, so a concurrent reader sees the old or the new records, not an empty file."""
    data = text.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        old = os.fstat(fd).st_size
        if len(data) < old:
            data += b"\n" * (old - len(data))
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)
