"""The local node agent: the one stand-in of the test cluster.

A kubelet and a container runtime cannot run here, so this agent plays the node. It registers a
Node (Ready, with cpu/memory/pods/nvidia.com/gpu capacity) and keeps its Lease fresh, so the real
scheduler binds Pods to it and the node lifecycle controller leaves it alone. For every Pod bound to
it, it runs each container's command as a local process: from the container's image when this
machine's buildah storage has it (`make images`; images.py says what that gives and what it does
not), otherwise in the project's environment (the venv's bin first on PATH, so ``python`` is the
venv's python).

Filesystem: each container runs in a private mount namespace (``unshare --mount``, the agent runs
as root) where every volumeMount, and the termination-message file, is bind-mounted at its
mountPath, so a process reads ``/etc/config/x`` as in a real container while two Pods mounting the
same path do not collide. A missing mountpoint is created (empty) on the host first.

Network identity (podnet.py): the node owns a block of loopback addresses and gives each Pod its
own as podIP; each container runs in its own UTS namespace with the Pod's hostname, and gets an
/etc/hosts with its own name and the records cluster DNS would serve for the headless Services of
its namespace (kept current as Pods and Services change). Several agents, each a Node with its own
block, make a multi-node cluster on one machine.

It serves the kubelet's container-log endpoint (kubeletlogs.py) on a free port of its InternalIP,
which the Node advertises, so `kubectl logs [-f]` works through the API server.

It reports what the kubelet reports (phase, conditions, container states with exit codes, reasons
and termination messages, restart counts, podIP), so the real Job controller completes,
retries and fails Jobs. Deleting a Pod kills its process groups (SIGTERM, then SIGKILL after the
grace period, capped at MAX_GRACE), records the terminal phase, and removes the Pod with grace 0.

Run it as ``python -m kubeharness.nodeagent --kubeconfig K --state DIR``; the harness does.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from . import images, podnet, podspec
from .binaries import KUBERNETES_VERSION
from .kubeletlogs import LogServer
from .podrun import PodRun, delete_now, now, now_micro, raw

log = logging.getLogger("kubeharness.nodeagent")

LEASE_SECONDS = 40
RENEW_EVERY = 10.0
STATUS_EVERY = 30.0
RELIST_EVERY = 50  # seconds a watch runs before a full re-list (also the resync)
DNS_EVERY = 1.0  # seconds between refreshes of the Pods' /etc/hosts
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"


class NodeAgent:
    def __init__(self, api: client.ApiClient, node: str, state: Path, gpus: int = 8,
                 cpu: str = "16", memory: str = "64Gi", pods: int = 110,
                 pod_cidr: str = str(podnet.FIRST_BLOCK)):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.addresses = podnet.PodAddresses(pod_cidr)
        self.coordination = client.CoordinationV1Api(api)
        self.reader = podspec.Reader(self.core)
        self.node = node
        self.state = state
        self.capacity = {"cpu": cpu, "memory": memory, "pods": str(pods),
                         "ephemeral-storage": "100Gi", "nvidia.com/gpu": str(gpus)}
        self.allocatable = dict(self.capacity)
        self.runs: dict[str, PodRun] = {}
        self.registered_at = now()  # the conditions never change, so they never transition
        self.stopping = threading.Event()
        server = urlparse(api.configuration.host)
        self.api_host, self.api_port = server.hostname or "127.0.0.1", server.port or 443
        self.venv_bin = str(Path(sys.executable).parent)
        self.logs = LogServer(self.container_log, state / "kubelet-certs", node,
                              host=self.addresses.node_ip)

    # --- the Pod's environment ----------------------------------------------------------------
    def base_env(self, pod: dict, image: images.Image | None = None) -> dict[str, str]:
        """A container's starting point: the image's Env when it runs from an image, else the
        project's environment with the venv first on PATH; then what the kubelet always adds."""
        if image:
            env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                   **image.env()}
        else:
            drop = ("KUBECONFIG", "PYTEST_", "KUBERNETES_")
            env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
            env["PATH"] = f"{self.venv_bin}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        env["HOSTNAME"] = podnet.hostname(pod)
        # in-cluster config (kubernetes.config.load_incluster_config, kopf) finds the API here
        port = str(self.api_port)
        env.update({
            "KUBERNETES_SERVICE_HOST": self.api_host, "KUBERNETES_SERVICE_PORT": port,
            "KUBERNETES_SERVICE_PORT_HTTPS": port,
            "KUBERNETES_PORT": f"tcp://{self.api_host}:{port}",
            "KUBERNETES_PORT_443_TCP": f"tcp://{self.api_host}:{port}",
            "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
            "KUBERNETES_PORT_443_TCP_ADDR": self.api_host,
            "KUBERNETES_PORT_443_TCP_PORT": port,
        })
        return env

    # --- the Node ----------------------------------------------------------------------------
    def _node_status(self) -> dict:
        ts = now()

        def cond(t: str, s: str, reason: str, msg: str) -> dict:
            return {"type": t, "status": s, "reason": reason, "message": msg,
                    "lastHeartbeatTime": ts, "lastTransitionTime": self.registered_at}

        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
                cond("Ready", "True", "KubeletReady", "kubeharness node agent is posting ready"),
            ],
            "addresses": [{"type": "InternalIP", "address": self.addresses.node_ip},
                          {"type": "Hostname", "address": self.node}],
            # where the API server fetches `kubectl logs` (the log server's port once started)
            "daemonEndpoints": {"kubeletEndpoint": {
                "Port": self.logs.port if self.logs.httpd else 10250}},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "",
                "kernelVersion": os.uname().release,
                "osImage": "kubeharness", "containerRuntimeVersion": "kubeharness://local-process",
                "kubeletVersion": KUBERNETES_VERSION, "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }

    def register(self) -> None:
        body = {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": self.node, "labels": {
                "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "node.kubernetes.io/instance-type": "kubeharness",
            }},
            "spec": {"podCIDR": str(self.addresses.block),
                     "podCIDRs": [str(self.addresses.block)]},
            "status": self._node_status(),
        }
        try:
            self.core.create_node(body, _preload_content=False)
        except ApiException as e:
            if e.status != 409:
                raise
        # the create may drop status; make sure it is there
        self._patch_node_status()
        self._renew_lease()

    def _patch_node_status(self) -> None:
        # strategic merge: conditions merge by type, so others' conditions stay
        self.core.patch_node_status(self.node, {"status": self._node_status()},
                                    _content_type=STRATEGIC_PATCH, _preload_content=False)

    def _renew_lease(self) -> None:
        node = raw(self.core.read_node(self.node, _preload_content=False))
        body = {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease",
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                                              "name": self.node,
                                              "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": self.node, "leaseDurationSeconds": LEASE_SECONDS,
                     "renewTime": now_micro()},
        }
        try:
            self.coordination.patch_namespaced_lease(
                self.node, "kube-node-lease", {"spec": body["spec"]},
                _content_type=MERGE_PATCH, _preload_content=False)
        except ApiException as e:
            if e.status != 404:
                raise
            self.coordination.create_namespaced_lease("kube-node-lease", body,
                                                      _preload_content=False)

    def _heartbeat(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(RENEW_EVERY):
            try:
                self._renew_lease()
                if time.monotonic() - last_status >= STATUS_EVERY:
                    self._patch_node_status()
                    last_status = time.monotonic()
            except Exception as e:  # keep beating; the API server may be restarting
                log.warning("heartbeat: %s", e)

    # --- Pods --------------------------------------------------------------------------------
    def _observe(self, kind: str, pod: dict) -> None:
        meta = pod["metadata"]
        uid = meta["uid"]
        run = self.runs.get(uid)
        if kind == "DELETED":
            if run := self.runs.pop(uid, None):
                run.request_delete(0)
            return
        deleting = meta.get("deletionTimestamp") is not None
        if run is None:
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed") or deleting:
                # nothing of ours runs: a Pod that never started, or from before a restart
                if deleting:
                    with contextlib.suppress(ApiException):
                        self.core.delete_namespaced_pod(
                            meta["name"], meta["namespace"], body=delete_now(uid),
                            _preload_content=False)
                return
            run = self.runs[uid] = PodRun(self, pod)
            run.start()
        elif deleting and not run.deleting.is_set():
            run.request_delete(meta.get("deletionGracePeriodSeconds"))

    def _relist(self) -> str:
        resp = raw(self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", _preload_content=False))
        seen = set()
        for pod in resp["items"]:
            seen.add(pod["metadata"]["uid"])
            self._observe("ADDED", pod)
        for uid in list(self.runs):
            if uid not in seen:  # deleted while we were not watching
                self.runs.pop(uid).request_delete(0)
        return resp["metadata"]["resourceVersion"]

    def watch_from(self, rv: str) -> bool:
        """Follow this node's Pod events from rv until the server ends the watch.

        Returns False when rv has expired (410 Gone, after etcd compaction or a long disconnect):
        the caller must re-list, since events were missed."""
        w = watch.Watch()
        try:
            for ev in w.stream(self.core.list_pod_for_all_namespaces,
                               field_selector=f"spec.nodeName={self.node}",
                               resource_version=rv, timeout_seconds=RELIST_EVERY,
                               allow_watch_bookmarks=True):
                if self.stopping.is_set():
                    break
                if ev["type"] != "BOOKMARK":
                    self._observe(ev["type"], ev["raw_object"])
        except ApiException as e:
            if e.status == 410:
                return False
            raise
        return True

    def watch_pods(self) -> None:
        # a re-list after every watch, expired or not, doubles as the periodic resync
        while not self.stopping.is_set():
            try:
                if not self.watch_from(self._relist()):
                    log.info("pod watch expired (410 Gone); re-listing")
            except Exception as e:  # connection reset, API server restart: re-list
                log.warning("pod watch: %r", e)
                self.stopping.wait(1.0)

    # --- name resolution ----------------------------------------------------------------------
    def dns_view(self, namespace: str) -> tuple[list[dict], list[dict]]:
        """The namespace's Services and Pods (all nodes'): what its Pods' DNS records come from."""
        services = raw(self.core.list_namespaced_service(namespace, _preload_content=False))
        pods = raw(self.core.list_namespaced_pod(namespace, _preload_content=False))
        return services["items"], pods["items"]

    def refresh_names(self) -> None:
        """Rewrite the /etc/hosts of this node's running Pods as their namespaces change (a
        poll every DNS_EVERY seconds: records appear as Pods get addresses, like DNS's)."""
        while not self.stopping.wait(DNS_EVERY):
            try:
                runs = [r for r in list(self.runs.values()) if not r.done.is_set()]
                for ns in {r.ns for r in runs}:
                    view = self.dns_view(ns)
                    for run in runs:
                        if run.ns == ns:
                            run.write_hosts(view)
            except Exception as e:  # the API server may be restarting: try again next tick
                log.warning("name resolution: %r", e)

    # --- the kubelet's log endpoint -----------------------------------------------------------
    def container_log(self, namespace: str, pod: str, container: str):
        """(the ContainerRun or None, its output file or None), for the log server."""
        for run in list(self.runs.values()):
            if (run.ns, run.pod_name) == (namespace, pod):
                for c in run.inits + run.mains:
                    if c.name == container:
                        return c, c.log_path
                return None, None
        # a Pod that ran before this agent started: its file only
        for d in sorted((self.state / "pods").glob(f"{namespace}_{pod}_*")):
            if (d / f"{container}.log").exists():
                return None, d / f"{container}.log"
        return None, None

    def shutdown(self) -> None:
        self.stopping.set()
        self.logs.stop()
        for run in list(self.runs.values()):
            for c in run.inits + run.mains:
                c.kill(1.0)

    def serve(self, ready_file: Path | None = None) -> None:
        self.logs.start()
        self.register()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.refresh_names, name="names", daemon=True).start()
        if ready_file:
            ready_file.write_text(self.node)
        self.watch_pods()


def pod_dir(state: Path, namespace: str, name: str, uid: str) -> Path:
    """Where the agent keeps a Pod's files: <container>.log, volumes/, termination/."""
    return state / "pods" / f"{namespace}_{name}_{uid}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--state", required=True, type=Path)
    p.add_argument("--node", default="kubeharness-node")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--cpu", default="16")
    p.add_argument("--memory", default="64Gi")
    p.add_argument("--pod-cidr", default=str(podnet.FIRST_BLOCK),
                   help="this node's loopback block: its InternalIP and its Pods' addresses")
    p.add_argument("--ready-file", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if shutil.which("unshare") is None or os.geteuid() != 0:
        sys.exit("the node agent needs root and unshare(1) (util-linux) to give each container "
                 "its own mount namespace")
    cfg = client.Configuration()
    config.load_kube_config(config_file=args.kubeconfig, client_configuration=cfg)
    cfg.connection_pool_maxsize = 64
    agent = NodeAgent(client.ApiClient(cfg), args.node, args.state, args.gpus, args.cpu,
                      args.memory, pod_cidr=args.pod_cidr)

    def on_term(signum, frame):
        agent.shutdown()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        agent.serve(args.ready_file)
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
