"""pytest fixtures for tests against the real test cluster, shared by tests/cluster and tests/chart
(tests/conftest.py imports them, so one pytest session starts one cluster).

One cluster per pytest session: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
(Kubernetes v1.36.3) and the local node agent, plus a MinIO S3 server. Everything listens on
free loopback ports and is stopped at session end (and killed by the kernel if pytest dies).
Missing binaries make these fixtures error, never skip, with the command that builds them
(``make cluster-tools``). Mark tests that use them ``@pytest.mark.cluster``.

Session-scoped:

``cluster``            kubeharness.cluster.Cluster: ``.kubeconfig``, ``.state``, ``.node_name``,
                       ``.gpus``, ``.pods_dir``, ``.api_client()``, ``.control_plane.server``;
                       component logs under ``cluster.state / "logs"``.
``kubeconfig``         Path of the admin kubeconfig (kubectl and the kubernetes client read it).
``k8s_api``            kubernetes.client.ApiClient configured for the cluster admin; wrap it:
                       ``client.CoreV1Api(k8s_api)``, ``client.BatchV1Api(k8s_api)``, ...
``kube_env``           os.environ plus KUBECONFIG, the pinned kubectl and helm first on PATH: as
                       ``env=`` to subprocesses (an operator under test, kubectl, helm).
``kubectl``            kubectl(*args, input=None, check=True) -> CompletedProcess (text), the
                       pinned kubectl against this cluster.
``namespace_factory``  make(prefix="t") -> name: a fresh namespace whose ``default``
                       ServiceAccount exists (Pods are rejected before it does). Deleted at
                       session end.
``node_agent``         NodeAgentInfo: ``.name``, ``.gpus``, ``.pods_dir``, and
                       ``.log(pod, container=None) -> Path`` for a container's output file
                       (``<pods_dir>/<namespace>_<pod>_<uid>/<container>.log``).
``second_node``        (module-scoped) the name of a second Node, another node agent with its own
                       address block, for multi-node tests; removed after the module, so the
                       other tests see the one-node cluster.
``s3``                 kubeharness.s3server.S3Server: ``.endpoint``, ``.access_key``,
                       ``.secret_key``, ``.region``, ``.make_bucket(name=None) -> name``,
                       ``.client()`` (boto3), ``.env()`` (AWS_* variables for a subprocess).
``kueue``              kubeharness.kueue.Kueue: Kueue's controller manager (binaries.KUEUE_VERSION)
                       with its CRDs and webhooks, started on first use; ``.manage(api,
                       namespace)`` lets it manage a namespace's Jobs (only labelled namespaces'
                       Jobs pass through it), ``.log`` its output.

Function-scoped:

``namespace``          a fresh namespace for one test, deleted (with its Pods) afterwards.
``prometheus_factory`` start(targets=["127.0.0.1:PORT"], extra_scrape_configs=[...],
                       scrape_interval="1s") -> kubeharness.prometheus.Prometheus with
                       ``.url``, ``.query(promql)``, ``.wait_for_value(promql, timeout)``;
                       stopped after the test.
``wait_until``         wait_until(fn, timeout=60, what="...") -> fn's first truthy result.
``kwok_factory``       start(nodes=4, gpus_per_node=8, stages=[...]) -> kubeharness.kwok.Kwok:
                       kwok playing that many tainted GPU nodes beside the node agent, with
                       ``.node_selector`` and ``.toleration`` for the Pods meant for them, and
                       ``.node_names``; its nodes are deleted and kwok stopped after the test.
                       ``stages``: kwok Stage documents replacing the defaults of the same name
                       (kubeharness/kwok_stages.yaml).
"""

from __future__ import annotations

import contextlib
import importlib.util
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes import client

from kubeharness import binaries, images, testing
from kubeharness.cluster import Cluster
from kubeharness.kueue import Kueue
from kubeharness.kwok import Kwok
from kubeharness.prometheus import Prometheus
from kubeharness.s3server import S3Server

GPUS = 8
IMAGES_BUILD = Path(__file__).resolve().parents[2] / "images" / "build.py"


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state = tmp_path_factory.mktemp("kubeharness")
    c = Cluster(state, gpus=GPUS)
    c.start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def k8s_api(cluster: Cluster) -> client.ApiClient:
    return cluster.api_client()


@pytest.fixture(scope="session")
def kube_env(cluster: Cluster) -> dict[str, str]:
    return cluster.control_plane.env()


@pytest.fixture(scope="session")
def kubectl(cluster: Cluster) -> Callable[..., subprocess.CompletedProcess]:
    exe = str(binaries.find("kubectl"))

    def run(*args: str, input: str | None = None, check: bool = True):
        proc = subprocess.run([exe, f"--kubeconfig={cluster.kubeconfig}", *args], input=input,
                              capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return proc

    return run


@pytest.fixture
def wait_until() -> Callable:
    return testing.wait_until


@pytest.fixture(scope="session")
def namespace_factory(k8s_api: client.ApiClient) -> Iterator[Callable[..., str]]:
    core = client.CoreV1Api(k8s_api)
    made: list[str] = []

    def make(prefix: str = "t") -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        core.create_namespace({"metadata": {"name": name}})
        made.append(name)

        def has_default_sa() -> bool:
            try:
                return core.read_namespaced_service_account("default", name) is not None
            except client.ApiException as e:
                if e.status == 404:
                    return False
                raise

        testing.wait_until(has_default_sa, 60, f"ServiceAccount {name}/default")
        return name

    make.delete = lambda name: core.delete_namespace(name)  # type: ignore[attr-defined]
    yield make
    for name in made:
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(name)


@pytest.fixture
def namespace(namespace_factory) -> Iterator[str]:
    name = namespace_factory()
    yield name
    with contextlib.suppress(client.ApiException):
        namespace_factory.delete(name)


@dataclass(frozen=True)
class NodeAgentInfo:
    name: str
    gpus: int
    pods_dir: Path

    def pod_dir(self, pod: client.V1Pod | dict) -> Path:
        if not isinstance(pod, dict):
            pod = client.ApiClient().sanitize_for_serialization(pod)
        meta = pod["metadata"]
        return self.pods_dir / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def log(self, pod: client.V1Pod | dict, container: str | None = None) -> Path:
        if not isinstance(pod, dict):
            pod = client.ApiClient().sanitize_for_serialization(pod)
        name = container or pod["spec"]["containers"][0]["name"]
        return self.pod_dir(pod) / f"{name}.log"


@pytest.fixture(scope="session")
def node_agent(cluster: Cluster) -> NodeAgentInfo:
    return NodeAgentInfo(cluster.node_name, cluster.gpus, cluster.pods_dir)


@pytest.fixture(scope="module")
def second_node(cluster: Cluster) -> Iterator[str]:
    node = cluster.add_node()
    try:
        yield node
    finally:
        cluster.remove_node(node)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: list[str] | None = None, extra_scrape_configs: list[dict] | None = None,
              scrape_interval: str = "1s") -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus-{len(started)}", list(targets or []),
                          scrape_interval, list(extra_scrape_configs or []))
        started.append(prom)
        return prom.start()

    yield start
    for prom in started:
        prom.stop()


@pytest.fixture(scope="session")
def kueue(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kueue]:
    k = Kueue(tmp_path_factory.mktemp("kueue"), cluster.kubeconfig, cluster.control_plane.pki)
    k.start()
    try:
        yield k
    finally:
        k.stop()


@pytest.fixture
def kwok_factory(cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., Kwok]]:
    started: list[Kwok] = []

    def start(nodes: int = 4, gpus_per_node: int = 8, stages: list[dict] | None = None) -> Kwok:
        if started:
            raise RuntimeError("one kwok per test: its nodes share their names")
        kwok = Kwok(tmp_path / "kwok", cluster.kubeconfig, nodes=nodes,
                    gpus_per_node=gpus_per_node, stages=list(stages or []))
        started.append(kwok)
        return kwok.start()

    yield start
    for kwok in started:
        kwok.stop()


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    spec = importlib.util.spec_from_file_location("images_build", IMAGES_BUILD)
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    if not images.available():
        pytest.fail("buildah is not installed: run `make images` (it installs buildah and "
                    "mmdebstrap, then builds both images)")
    stale = [ref for name, ref in build.IMAGES.items() if not build.current(name)]
    if stale:
        pytest.fail(f"images {stale} are missing or older than the working tree: run "
                    "`make images`")
    return dict(build.IMAGES)
