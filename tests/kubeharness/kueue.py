"""Kueue's controller manager against the test cluster, its webhooks served on loopback.

The operator hands its stage Jobs to Kueue (created suspended, with the queue-name label); only a
real Kueue shows that they are admitted, held back by quota and released. This runs the released
Kueue (``binaries.KUEUE_VERSION``, built from the Go module proxy) as a local process:

- Manifests come from Kueue's own module source (``config/components`` in the module zip that the
  build downloaded): the CRDs with the conversion-webhook patches their kustomization lists, and the
  webhook configurations. What kustomize does to them is little (a service reference becomes our
  URL, a namespaceSelector is copied), so it is done here rather than building kustomize as one
  more Go tool.
- TLS: a serving certificate for 127.0.0.1 signed by the cluster's CA (``certs.serving_pair``);
  every webhook's clientConfig is ``https://127.0.0.1:<port><path>`` with that CA as caBundle.
  Kueue's own certificate management is off: it writes certificates for a Service DNS name, and
  Services do not route to loopback here.
- Kueue reads its metrics certificate from a fixed path (/etc/kueue/metrics/certs in its main.go)
  when its certificate management is off, so the process runs in its own mount namespace with the
  certificate directory bound there (``launch.py``, as Pods are started). The mountpoint is created
  empty on the host if missing, like a Pod's.
- Scope: the ``batch/job`` integration only. Its Job webhooks and ``managedJobsNamespaceSelector``
  match namespaces labelled ``MANAGED_LABEL`` (``manage(namespace)``), so the other tests' Jobs in
  the shared cluster never pass through Kueue; the other integrations' webhooks (Pods,
  Deployments, ...) are not registered. Kueue's own objects' webhooks are cluster-wide.
- VisibilityOnDemand is off: it is an aggregated API server that nothing here asks.
- It runs with the admin's credentials: Kueue's RBAC (config/components/rbac) is not exercised.

``stop()`` removes the webhook configurations first, so the cluster works without Kueue again.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from kubernetes import client

from . import binaries
from .certs import PKI, serving_pair
from .process import Service, free_port, wait_for

GROUP = "kueue.x-k8s.io"
VERSION = "v1beta2"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
MANAGED_LABEL = "kubeharness/kueue"
MANAGED_VALUE = "managed"
SYSTEM_NAMESPACE = "kueue-system"
METRICS_CERT_DIR = "/etc/kueue/metrics/certs"  # fixed in Kueue's cmd/kueue/main.go
START_TIMEOUT = 120.0
LAUNCHER = str(Path(__file__).with_name("launch.py"))


def module_source(version: str = binaries.KUEUE_VERSION) -> Path:
    """Kueue's module source (from the Go module cache; downloaded if the build did not)."""
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=mod"}
    proc = subprocess.run([binaries.go_binary(), "mod", "download", "-json",
                           f"sigs.k8s.io/kueue@{version}"], capture_output=True, text=True,
                          env=env, cwd="/")
    info = json.loads(proc.stdout or "{}")
    if proc.returncode != 0 or "Dir" not in info:
        raise RuntimeError(f"go mod download sigs.k8s.io/kueue@{version} failed: "
                           f"{info.get('Error') or proc.stderr[-2000:]}")
    return Path(info["Dir"])


def _client_config(url: str, path: str, ca: bytes) -> dict:
    return {"url": url + path, "caBundle": base64.b64encode(ca).decode()}


def render_crds(src: Path, url: str, ca: bytes) -> list[dict]:
    """Kueue's CRDs, with the conversion webhooks its kustomization patches in pointed at url."""
    base = src / "config" / "components" / "crd"
    kustomization = yaml.safe_load((base / "kustomization.yaml").read_text())
    crds: dict[str, dict] = {}
    for resource in kustomization["resources"]:
        for doc in yaml.safe_load_all((base / resource).read_text()):
            if doc:
                crds[doc["metadata"]["name"]] = doc
    for patch in kustomization.get("patches") or []:
        doc = yaml.safe_load((base / patch["path"]).read_text())
        conversion = (doc.get("spec") or {}).get("conversion")
        if not conversion:
            continue
        hook = conversion["webhook"]
        path = hook["clientConfig"]["service"].get("path", "/convert")
        crds[doc["metadata"]["name"]]["spec"]["conversion"] = {
            "strategy": conversion["strategy"],
            "webhook": {"clientConfig": _client_config(url, path, ca),
                        "conversionReviewVersions": hook["conversionReviewVersions"]},
        }
    return list(crds.values())


def render_webhooks(src: Path, url: str, ca: bytes) -> list[dict]:
    """Kueue's mutating and validating webhook configurations for its own objects and for
    batch/v1 Jobs (the latter only in managed namespaces), named as config/default names them."""
    manifests = src / "config" / "components" / "webhook" / "manifests.yaml"
    selector = {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}}
    out = []
    for doc in yaml.safe_load_all(manifests.read_text()):
        if not doc:
            continue
        kept = []
        for hook in doc["webhooks"]:
            targets = {(g, r) for rule in hook["rules"] for g in rule["apiGroups"]
                       for r in rule["resources"]}
            if any(g == GROUP for g, _ in targets):
                pass
            elif ("batch", "jobs") in targets:
                hook["namespaceSelector"] = selector
            else:
                continue  # an integration that is not enabled
            hook["clientConfig"] = _client_config(url, hook["clientConfig"]["service"]["path"], ca)
            kept.append(hook)
        doc["metadata"]["name"] = "kueue-" + doc["metadata"]["name"]
        doc["webhooks"] = kept
        out.append(doc)
    return out


def configuration(webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path) -> dict:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for a local process."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": SYSTEM_NAMESPACE,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "managedJobsNamespaceSelector": {"matchLabels": {MANAGED_LABEL: MANAGED_VALUE}},
        "integrations": {"frameworks": ["batch/job"]},
        "featureGates": {"VisibilityOnDemand": False},
        "clientConnection": {"qps": 50, "burst": 100},
    }


@dataclass
class Kueue:
    state: Path
    kubeconfig: Path  # the cluster admin's
    pki: PKI  # the cluster's: its CA signs the webhook certificate the API server checks
    tie_to_parent: bool = True
    webhook_port: int = 0
    health_port: int = 0
    metrics_port: int = 0
    service: Service | None = None
    webhook_names: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook_port}"

    @property
    def log(self) -> Path:
        return self.state / "logs" / "kueue.log"

    def start(self) -> Kueue:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _kubectl(self, *args: str, input: str | None = None) -> str:
        proc = subprocess.run([str(binaries.find("kubectl")), f"--kubeconfig={self.kubeconfig}",
                               *args], input=input, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
        return proc.stdout

    def _api(self) -> client.ApiClient:
        from kubernetes import config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return client.ApiClient(cfg)

    def _start(self) -> None:
        exe = binaries.find("kueue")
        src = module_source()
        self.state.mkdir(parents=True, exist_ok=True)
        certs = self.state / "certs"
        serving_pair(self.pki, certs, "tls", ["127.0.0.1", "localhost"])
        ca = self.pki.ca.cert.read_bytes()
        self.webhook_port, self.health_port = free_port(), free_port()
        self.metrics_port = free_port()

        crds = render_crds(src, self.webhook_url, ca)
        (self.state / "crds.yaml").write_text(yaml.safe_dump_all(crds))
        # server-side: the Workload CRD is too large for client-side apply's annotation
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f",
                      str(self.state / "crds.yaml"))
        self._kubectl("wait", "--for=condition=Established", "--timeout=60s",
                      *[f"crd/{c['metadata']['name']}" for c in crds])
        self._kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}))

        cfg = self.state / "config.yaml"
        cfg.write_text(yaml.safe_dump(configuration(
            self.webhook_port, self.health_port, self.metrics_port, certs)))
        launch = {"mounts": [[str(certs), METRICS_CERT_DIR, True, False]],
                  "workdir": str(self.state), "host_workdir": True, "keep": [],
                  "argv": [str(exe), f"--config={cfg}", f"--kubeconfig={self.kubeconfig}"]}
        self.service = Service("kueue", [
            "unshare", "--mount", "--propagation", "private",
            sys.executable, "-I", "-S", LAUNCHER, json.dumps(launch),
        ], self.state, cwd=self.state, tie_to_parent=self.tie_to_parent).start()
        # ready = caches synced and the webhook server listening
        wait_for(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{self.health_port}/readyz", timeout=2).status == 200,
            START_TIMEOUT, "Kueue /readyz", self.service)

        hooks = render_webhooks(src, self.webhook_url, ca)
        (self.state / "webhooks.yaml").write_text(yaml.safe_dump_all(hooks))
        self.webhook_names = [(h["kind"], h["metadata"]["name"]) for h in hooks]
        self._kubectl("apply", "--server-side", "--force-conflicts", "-f",
                      str(self.state / "webhooks.yaml"))
        self._wait_webhooks_called()

    def _wait_webhooks_called(self) -> None:
        """Until the API server calls Kueue's Job webhook: a queued Job, created as a dry run in
        a managed namespace, comes back suspended (Kueue's defaulting)."""
        api = self._api()
        try:
            self.manage(api, SYSTEM_NAMESPACE)
            batch = client.BatchV1Api(api)
            probe = {"metadata": {"generateName": "kueue-probe-",
                                  "labels": {QUEUE_LABEL: "probe"}},
                     "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
                         {"name": "probe", "image": "none", "command": ["true"]}]}}}}

            def mutated() -> bool:
                job = batch.create_namespaced_job(SYSTEM_NAMESPACE, probe, dry_run="All")
                return bool(job.spec.suspend)

            wait_for(mutated, 60, "the API server to call Kueue's Job webhook", self.service)
        finally:
            api.close()

    @staticmethod
    def manage(api: client.ApiClient, namespace: str) -> None:
        """Let Kueue manage the Jobs of this namespace (its Job webhooks and controller)."""
        client.CoreV1Api(api).patch_namespace(
            namespace, {"metadata": {"labels": {MANAGED_LABEL: MANAGED_VALUE}}})

    def stop(self) -> None:
        for kind, name in reversed(self.webhook_names):
            subprocess.run([str(binaries.find("kubectl")), f"--kubeconfig={self.kubeconfig}",
                            "delete", "--ignore-not-found", "--wait=false",
                            f"{kind.lower()}/{name}"], capture_output=True, timeout=60)
        self.webhook_names.clear()
        if self.service is not None:
            self.service.stop()
            self.service = None
