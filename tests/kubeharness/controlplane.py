"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Every port is picked free at start, so two control planes can run side by side. The API server
takes envtest's minimal flags plus what the controller manager needs to run real workloads:
service-account token signing, the cluster CA for the kube-root-ca.crt ConfigMap, and per-controller
credentials, so RBAC is exercised as on a real cluster.
"""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import binaries
from .certs import PKI, SERVICE_CIDR, make_pki
from .process import Service, free_port, wait_for

START_TIMEOUT = 120.0


def write_kubeconfig(path: Path, server: str, pki: PKI, cert: Path, key: Path, user: str) -> Path:
    """A kubeconfig with everything inlined: kubectl and the Python client both read it."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubeharness", "cluster": {
            "server": server, "certificate-authority-data": b64(pki.ca.cert)}}],
        "users": [{"name": user, "user": {
            "client-certificate-data": b64(cert), "client-key-data": b64(key)}}],
        "contexts": [{"name": "kubeharness", "context": {"cluster": "kubeharness", "user": user}}],
        "current-context": "kubeharness",
        "preferences": {},
    }
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    path.chmod(0o600)
    return path


def _https_ok(url: str, pki: PKI | None = None) -> bool:
    ctx = ssl.create_default_context()
    if pki is None:  # the components' self-signed serving certs: only liveness is asked
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx.load_verify_locations(str(pki.ca.cert))
        ctx.load_cert_chain(str(pki.admin.cert), str(pki.admin.key))
    with urllib.request.urlopen(url, context=ctx, timeout=2) as resp:
        return resp.status == 200


@dataclass
class ControlPlane:
    state: Path
    tie_to_parent: bool = True
    # more flags per component ("kube-apiserver", "kube-controller-manager", "kube-scheduler"),
    # e.g. an audit log or higher client QPS for a scale benchmark
    extra_args: dict[str, list[str]] = field(default_factory=dict)
    pki: PKI | None = None
    api_port: int = 0
    etcd_url: str = ""
    services: list[Service] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.state / "kubeconfig"

    def _service(self, name: str, argv: list[str]) -> Service:
        argv = [*argv, *self.extra_args.get(name, [])]
        svc = Service(name, argv, self.state, tie_to_parent=self.tie_to_parent)
        self.services.append(svc)
        return svc.start()

    def start(self) -> ControlPlane:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        bins = {name: str(binaries.find(name)) for name in (
            "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}
        self.state.mkdir(parents=True, exist_ok=True)
        # a new cluster every time: old objects would carry tokens signed by an old key
        shutil.rmtree(self.state / "etcd", ignore_errors=True)
        self.pki = pki = make_pki(self.state / "pki")

        etcd_port, peer_port = free_port(), free_port()
        self.etcd_url = etcd_url = f"http://127.0.0.1:{etcd_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = self._service("etcd", [
            bins["etcd"], "--name=default", f"--data-dir={self.state / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # a test cluster's data is disposable: skipping fsync makes every write cheap
            "--unsafe-no-fsync", "--log-level=warn",
        ])
        wait_for(lambda: urllib.request.urlopen(f"{etcd_url}/health", timeout=2).status == 200,
                 START_TIMEOUT, "etcd /health", etcd)

        self.api_port = free_port()
        apiserver = self._service("kube-apiserver", [
            bins["kube-apiserver"],
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={self.state / 'apiserver-certs'}",
            f"--tls-cert-file={pki.apiserver.cert}", f"--tls-private-key-file={pki.apiserver.key}",
            f"--client-ca-file={pki.ca.cert}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.api_port}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--authorization-mode=RBAC",
            "--allow-privileged=true",
            # Endpoints may not hold loopback addresses, and nothing routes Service IPs here
            "--endpoint-reconciler-type=none",
            # reach the node agent's log endpoint (kubectl logs) by its IP, not by a hostname
            # that nothing resolves
            "--kubelet-preferred-address-types=InternalIP",
            "--v=1",
        ])
        wait_for(lambda: _https_ok(f"{self.server}/readyz", pki), START_TIMEOUT,
                 "kube-apiserver /readyz", apiserver)
        write_kubeconfig(self.kubeconfig, self.server, pki, pki.admin.cert, pki.admin.key,
                         "admin")

        kcm_conf = write_kubeconfig(self.state / "controller-manager.kubeconfig", self.server, pki,
                                    pki.controller_manager.cert, pki.controller_manager.key,
                                    "system:kube-controller-manager")
        sched_conf = write_kubeconfig(self.state / "scheduler.kubeconfig", self.server, pki,
                                      pki.scheduler.cert, pki.scheduler.key,
                                      "system:kube-scheduler")
        kcm_port, sched_port = free_port(), free_port()
        kcm = self._service("kube-controller-manager", [
            bins["kube-controller-manager"],
            f"--kubeconfig={kcm_conf}", f"--authentication-kubeconfig={kcm_conf}",
            f"--authorization-kubeconfig={kcm_conf}",
            "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
            f"--cert-dir={self.state / 'controller-manager-certs'}",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--root-ca-file={pki.ca.cert}",
            "--use-service-account-credentials=true",
            # every default controller: job, garbagecollector, namespace, serviceaccount,
            # serviceaccount-token, replicaset, deployment, nodelifecycle, ...
            "--controllers=*",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--v=1",
        ])
        sched = self._service("kube-scheduler", [
            bins["kube-scheduler"],
            f"--kubeconfig={sched_conf}", f"--authentication-kubeconfig={sched_conf}",
            f"--authorization-kubeconfig={sched_conf}",
            "--bind-address=127.0.0.1", f"--secure-port={sched_port}",
            "--leader-elect=false", "--v=1",
        ])
        wait_for(lambda: _https_ok(f"https://127.0.0.1:{kcm_port}/healthz"), START_TIMEOUT,
                 "kube-controller-manager /healthz", kcm)
        wait_for(lambda: _https_ok(f"https://127.0.0.1:{sched_port}/healthz"), START_TIMEOUT,
                 "kube-scheduler /healthz", sched)

    def stop(self) -> None:
        # reverse order: clients first, etcd last
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()

    def env(self) -> dict[str, str]:
        """The environment a client process needs: KUBECONFIG, the pinned kubectl and helm first
        on PATH."""
        dirs = [str(binaries.find(tool).parent) for tool in ("kubectl", "helm")]
        path = os.pathsep.join([*dict.fromkeys(dirs), os.environ.get("PATH", "")])
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig), "PATH": path}
