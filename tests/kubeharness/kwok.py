"""kwok (sigs.k8s.io/kwok) playing many nodes, and the Pods placed on them, against the harness's
control plane: what a scale test needs and the local node agent cannot give (it runs every Pod as
a real process).

kwok registers nothing itself: we create the Nodes (with GPU capacity, a label and a taint, so only
Pods that ask for these nodes land on them), and kwok, managing the Nodes with that label, turns
them Ready, renews their Leases and moves their Pods through the Stages in kwok_stages.yaml
(scheduled -> Running -> Succeeded after a short delay when a Job owns them). A caller's Stage of
the same name replaces a default one, e.g. a ``pod-complete`` that writes a termination message.
The Job controller, the scheduler and the garbage collector stay the real ones.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client, config

from . import binaries
from .process import Service, free_port, wait_for

STAGES_FILE = Path(__file__).with_name("kwok_stages.yaml")
NODE_LABEL = ("type", "kwok")
TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
START_TIMEOUT = 120.0


def load_stages(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge_stages(defaults: list[dict], overrides: list[dict]) -> list[dict]:
    """The default Stages, each one the caller names again replaced; then the caller's new ones."""
    by_name = {s["metadata"]["name"]: s for s in overrides}
    merged = [by_name.pop(s["metadata"]["name"], s) for s in defaults]
    return merged + list(by_name.values())


def node_manifest(name: str, gpus: int, cpu: str = "96", memory: str = "1Ti",
                  pods: int = 110) -> dict:
    capacity = {"cpu": cpu, "memory": memory, "pods": str(pods), "nvidia.com/gpu": str(gpus)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {NODE_LABEL[0]: NODE_LABEL[1], "kubernetes.io/hostname": name,
                       "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64"},
            "annotations": {"kwok.x-k8s.io/node": "fake"},
        },
        "spec": {"taints": [dict(TAINT)]},
        # The API server keeps a new Node's status: kwok's node-initialize Stage reports it back.
        "status": {"capacity": capacity, "allocatable": dict(capacity)},
    }


@dataclass
class Kwok:
    """kwok and its Nodes. ``start()`` returns once every Node is Ready; ``stop()`` deletes them."""

    state: Path  # config and log go here (logs/kwok.log)
    kubeconfig: Path
    nodes: int = 4
    gpus_per_node: int = 8
    prefix: str = "kwok-node"
    stages: list[dict] = field(default_factory=list)
    # kwok renews each node's Lease every quarter of this, as a kubelet does: 128 nodes at 40 s
    # are 13 writes a second. A longer lease needs the controller manager's
    # --node-monitor-grace-period above it, or the nodes turn NotReady.
    lease_seconds: int = 40
    tie_to_parent: bool = True
    service: Service | None = None
    metrics_port: int = 0

    @property
    def node_names(self) -> list[str]:
        return [f"{self.prefix}-{i}" for i in range(self.nodes)]

    @property
    def node_selector(self) -> dict[str, str]:
        """What a Pod's nodeSelector says to run on these nodes (with `toleration`)."""
        return {NODE_LABEL[0]: NODE_LABEL[1]}

    @property
    def toleration(self) -> dict[str, str]:
        return {"key": TAINT["key"], "operator": "Equal", "value": TAINT["value"],
                "effect": TAINT["effect"]}

    def _core(self) -> client.CoreV1Api:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.CoreV1Api(client.ApiClient(cfg))

    def start(self) -> Kwok:
        self.state.mkdir(parents=True, exist_ok=True)
        conf = self.state / "kwok-stages.yaml"
        stages = merge_stages(load_stages(STAGES_FILE), copy.deepcopy(self.stages))
        conf.write_text(yaml.safe_dump_all(stages, sort_keys=False))
        self.metrics_port = free_port()
        self.service = Service("kwok", [
            str(binaries.find("kwok")), f"--kubeconfig={self.kubeconfig}", f"--config={conf}",
            f"--manage-nodes-with-label-selector={NODE_LABEL[0]}={NODE_LABEL[1]}",
            f"--node-lease-duration-seconds={self.lease_seconds}",
            # Pod IPs come from this pool; completed Pods keep theirs, so make it large.
            "--cidr=10.64.0.0/14",
            f"--server-address=127.0.0.1:{self.metrics_port}",
        ], self.state, tie_to_parent=self.tie_to_parent).start()
        try:
            core = self._core()
            for name in self.node_names:
                try:
                    core.create_node(node_manifest(name, self.gpus_per_node))
                except client.ApiException as exc:
                    if exc.status != 409:
                        raise
            want = set(self.node_names)
            selector = f"{NODE_LABEL[0]}={NODE_LABEL[1]}"

            def all_ready() -> bool:
                ready = {n.metadata.name for n in core.list_node(label_selector=selector).items
                         if any(c.type == "Ready" and c.status == "True"
                                for c in n.status.conditions or [])}
                return want <= ready

            t0 = time.monotonic()
            wait_for(all_ready, START_TIMEOUT, f"{self.nodes} kwok nodes Ready", self.service,
                     interval=0.5)
            self.ready_in = time.monotonic() - t0
            core.api_client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, delete_nodes: bool = True) -> None:
        if delete_nodes:
            try:
                core = self._core()
                for name in self.node_names:
                    try:
                        core.delete_node(name)
                    except client.ApiException as exc:
                        if exc.status != 404:
                            raise
                core.api_client.close()
            except Exception:  # noqa: BLE001, S110 - the control plane may be gone already
                pass
        if self.service is not None:
            self.service.stop()
            self.service = None
