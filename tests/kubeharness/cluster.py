"""A whole test cluster: the control plane plus the local node agents (one per Node), started and
stopped as one. Nodes beyond the first can come and go while it runs (add_node, remove_node).

A scale benchmark may leave the node agents out (``node_agent=False``) and let kwok (kwok.py) play
its nodes instead."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from . import podnet
from .controlplane import START_TIMEOUT, ControlPlane
from .process import Service, wait_for

NODE_NAME = "kubeharness-node"


@dataclass
class Cluster:
    state: Path
    gpus: int = 8
    node_name: str = NODE_NAME
    tie_to_parent: bool = True
    nodes: int = 1  # node agents started with the cluster: node_name, then node_name-2, ...
    node_agent: bool = True  # False: no node agent at all (kwok plays the nodes)
    # more flags per control-plane component: ControlPlane.extra_args
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    control_plane: ControlPlane | None = None
    agent: Service | None = None  # the first node's agent
    agents: dict[str, Service] = field(default_factory=dict)  # every node's agent, by node
    _clients: list[client.ApiClient] = field(default_factory=list)
    _next_index: int = 1  # of the next added node: names and address blocks are never reused

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    @property
    def pods_dir(self) -> Path:
        """<pods_dir>/<namespace>_<pod>_<uid>/<container>.log: every container's output."""
        return self.state / "node" / "pods"

    def start(self) -> Cluster:
        t0 = time.monotonic()
        self.control_plane = ControlPlane(self.state, tie_to_parent=self.tie_to_parent,
                                          extra_args=self.extra_args)
        try:
            self.control_plane.start()
            if self.node_agent:
                self.agent = self._start_agent(self.node_name, 0)
                for _ in range(1, self.nodes):
                    self.add_node()
            self._wait_default_service_account()
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - t0
        return self

    def _start_agent(self, node: str, index: int, gpus: int | None = None) -> Service:
        """Start the agent of one Node, with the index-th loopback block (podnet.node_block)."""
        ready = self.state / "node" / ("ready" if index == 0 else f"ready-{node}")
        ready.parent.mkdir(parents=True, exist_ok=True)
        ready.unlink(missing_ok=True)
        name = "node-agent" if index == 0 else f"node-agent-{node}"
        agent = Service(name, [
            sys.executable, "-m", "kubeharness.nodeagent",
            f"--kubeconfig={self.kubeconfig}", f"--state={self.state / 'node'}",
            f"--node={node}", f"--gpus={self.gpus if gpus is None else gpus}",
            f"--pod-cidr={podnet.node_block(index)}", f"--ready-file={ready}",
        ], self.state, env=_agent_env(), tie_to_parent=self.tie_to_parent).start()
        self.agents[node] = agent
        wait_for(ready.exists, START_TIMEOUT, f"the node agent to register Node {node}", agent)
        core = client.CoreV1Api(self.api_client())

        def node_ready() -> bool:
            obj = core.read_node(node)
            return any(c.type == "Ready" and c.status == "True"
                       for c in obj.status.conditions or [])

        wait_for(node_ready, START_TIMEOUT, f"Node {node} Ready", agent)
        return agent

    def _wait_default_service_account(self) -> None:
        # Pods are rejected until the ServiceAccount controller made the namespace's "default"
        core = client.CoreV1Api(self.api_client())
        wait_for(lambda: core.read_namespaced_service_account("default", "default") is not None,
                 START_TIMEOUT, "ServiceAccount default/default")

    def add_node(self, gpus: int | None = None) -> str:
        """Start one more node agent: a Node named node_name-<k> with its own address block.
        Returns its name."""
        index, self._next_index = self._next_index, self._next_index + 1
        node = f"{self.node_name}-{index + 1}"
        self._start_agent(node, index, gpus)
        return node

    def remove_node(self, node: str) -> None:
        """Stop a node added by add_node (its Pods' processes with it) and delete its Node, so
        the scheduler places nothing there any more."""
        if node == self.node_name:
            raise ValueError("the first node stays for the cluster's life")
        self.agents.pop(node).stop(grace=15)
        try:
            client.CoreV1Api(self.api_client()).delete_node(node)
        except ApiException as e:
            if e.status != 404:
                raise

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
        for agent in reversed(list(self.agents.values())):
            agent.stop(grace=15)  # it stops its Pods' processes first
        self.agents.clear()
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
