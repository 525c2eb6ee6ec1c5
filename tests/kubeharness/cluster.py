"""A whole test cluster: the control plane plus the local node agent, started and stopped as one."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config

from .controlplane import START_TIMEOUT, ControlPlane
from .process import Service, wait_for

NODE_NAME = "kubeharness-node"


@dataclass
class Cluster:
    state: Path
    gpus: int = 8
    node_name: str = NODE_NAME
    tie_to_parent: bool = True
    control_plane: ControlPlane | None = None
    agent: Service | None = None
    _clients: list[client.ApiClient] = field(default_factory=list)

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pods_dir(self) -> Path:
        """<pods_dir>/<namespace>_<pod>_<uid>/<container>.log: every container's output."""
        return self.state / "node" / "pods"

    def start(self) -> Cluster:
        t0 = time.monotonic()
        self.control_plane = ControlPlane(self.state, tie_to_parent=self.tie_to_parent)
        try:
            self.control_plane.start()
            self._start_agent()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _start_agent(self) -> None:
        ready = self.state / "node" / "ready"
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        self.agent = Service("node-agent", [
            sys.executable, "-m", "kubeharness.nodeagent",
            f"--kubeconfig={self.kubeconfig}", f"--state={self.state / 'node'}",
            f"--node={self.node_name}", f"--gpus={self.gpus}", f"--ready-file={ready}",
        ], self.state, env=_agent_env(), tie_to_parent=self.tie_to_parent).start()
        wait_for(ready.exists, START_TIMEOUT, "the node agent to register its Node", self.agent)
        core = client.CoreV1Api(self.api_client())

        def node_ready() -> bool:
            node = core.read_node(self.node_name)
            return any(c.type == "Ready" and c.status == "True"
                       for c in node.status.conditions or [])

        wait_for(node_ready, START_TIMEOUT, f"Node {self.node_name} Ready", self.agent)
        # Pods are rejected until the ServiceAccount controller made the namespace's "default"
        wait_for(lambda: core.read_namespaced_service_account("default", "default") is not None,
                 START_TIMEOUT, "ServiceAccount default/default")

    def api_client(self) -> client.ApiClient:
        """A fresh ApiClient for the cluster admin (closed at stop)."""
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        api = client.ApiClient(cfg)
        self._clients.append(api)
        return api

    def stop(self) -> None:
        for api in self._clients:
            api.close()
        self._clients.clear()
        if self.agent is not None:
            self.agent.stop(grace=15)  # it stops its Pods' processes first
            self.agent = None
        if self.control_plane is not None:
            self.control_plane.stop()
            self.control_plane = None


def _agent_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
