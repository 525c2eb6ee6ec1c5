"""`cream get` and `cream logs`: a CreamRun's progress and its stages' output, read from a cluster.

`kubectl get creamruns` shows one line per run and `kubectl describe` the raw status; these read
the same status and print what `cream run` prints on one machine (the table of iterations), and
follow the running stage's Pod output through the API server (pods/log), so a user needs nothing
but the kubeconfig kubectl uses: the same file rules (--kubeconfig, then $KUBECONFIG, then
~/.kube/config, or the in-cluster ServiceAccount), the same context and namespace defaults.

The kubernetes client is imported only when one of these commands runs: it doubles the start-up
time of every other `cream` command.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .local import format_table
from .spec import GROUP, KIND, PLURAL, VERSION, CreamRunStatus, StepStatus

if TYPE_CHECKING:
    from kubernetes import client

CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_HINT = ("install it with the Helm chart (charts/cream-operator) or "
            "`kubectl apply -f crds/cream.dev_creamruns.yaml`")
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class ViewError(RuntimeError):
    """A problem the user can fix; the message says what and how."""


@dataclass
class Cluster:
    api: client.ApiClient
    namespace: str  # the context's namespace unless -n was given
    custom: Any = None  # client.CustomObjectsApi
    core: Any = None  # client.CoreV1Api

    def __post_init__(self) -> None:
        from kubernetes import client  # noqa: PLC0415 - see the module's docstring

        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)


def connect(kubeconfig: str | None = None, context: str | None = None,
            namespace: str | None = None) -> Cluster:
    """The API client and default namespace, found the way kubectl finds them."""
    from kubernetes import client, config  # noqa: PLC0415 - see the module's docstring
    from kubernetes.config.config_exception import ConfigException  # noqa: PLC0415

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    have_file = any(os.path.exists(p) for p in path.split(os.pathsep) if p)
    if not have_file and not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=cfg)
        ns = namespace or _read(IN_CLUSTER_NAMESPACE) or "default"
        return Cluster(client.ApiClient(cfg), ns)
    if not have_file:
        raise ViewError(f"no kubeconfig at {path}: pass --kubeconfig FILE or set KUBECONFIG, "
                        "as for kubectl")
    try:
        config.load_kube_config(config_file=kubeconfig, context=context,
                                client_configuration=cfg)
        contexts, active = config.list_kube_config_contexts(config_file=kubeconfig)
    except ConfigException as exc:
        raise ViewError(f"kubeconfig {path}: {exc}") from None
    if context:
        active = next((c for c in contexts if c["name"] == context), active)
    ns = namespace or (active or {}).get("context", {}).get("namespace") or "default"
    return Cluster(client.ApiClient(cfg), ns)


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _api_call(cluster: Cluster, call: Callable, what: str):
    """Run an API call; turn what can go wrong into a message naming the fix."""
    import urllib3  # noqa: PLC0415 - see the module's docstring
    from kubernetes import client  # noqa: PLC0415

    try:
        return call()
    except client.ApiException as exc:
        if exc.status == 404 and not crd_served(cluster):
            raise ViewError(f"the {KIND} CRD ({CRD_NAME}) is not installed in this cluster: "
                            f"{CRD_HINT}") from None
        if exc.status == 404:
            raise ViewError(f"{what} not found") from None
        if exc.status in (401, 403):
            raise ViewError(f"{what}: not allowed ({exc.status} {exc.reason}); your kubeconfig's "
                            f"user needs get/list on {CRD_NAME} (and pods, pods/log for "
                            "`cream logs`)") from None
        raise ViewError(f"{what}: the API server answered {exc.status} {exc.reason}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise ViewError(f"cannot reach the API server at {cluster.api.configuration.host}: "
                        f"{exc}") from None


def crd_served(cluster: Cluster) -> bool:
    """Whether the API server serves cream.dev/v1alpha1 (discovery, which every user may read)."""
    from kubernetes import client  # noqa: PLC0415 - see the module's docstring

    try:
        resources = cluster.custom.get_api_resources(GROUP, VERSION)
    except client.ApiException as exc:
        if exc.status == 404:
            return False
        raise ViewError(f"API discovery of {GROUP}/{VERSION}: {exc.status} {exc.reason}") \
            from None
    return any(r.name == PLURAL for r in resources.resources)


# --- cream get ---------------------------------------------------------------------------------

def list_runs(cluster: Cluster, name: str | None, all_namespaces: bool) -> list[dict]:
    custom = cluster.custom
    if name:
        what = f'{KIND} "{name}" in namespace "{cluster.namespace}"'
        return [_api_call(cluster, lambda: custom.get_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL, name), what)]
    if all_namespaces:
        body = _api_call(cluster, lambda: custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL), f"{KIND}s")
    else:
        body = _api_call(cluster, lambda: custom.list_namespaced_custom_object(
            GROUP, VERSION, cluster.namespace, PLURAL), f"{KIND}s")
    items = body.get("items", [])
    return sorted(items, key=lambda r: (r["metadata"]["namespace"], r["metadata"]["name"]))


def run_status(run: dict) -> CreamRunStatus:
    meta = run["metadata"]
    try:
        return CreamRunStatus.model_validate(run.get("status") or {})
    except ValidationError as exc:
        raise ViewError(f"{KIND} {meta['namespace']}/{meta['name']}: its status does not match "
                        f"this cream's schema (operator and CLI versions differ?): {exc}") from None


def _total_iterations(spec: dict) -> int | None:
    """The run's iterations as the raw spec says them (CreamRunSpec.rounds, without parsing)."""
    schedule = spec.get("schedule")
    if schedule:
        return sum(0 if s.get("kind") == "sft" else s.get("iterations") or 1 for s in schedule)
    return spec.get("iterations")


def format_run(run: dict) -> str:
    """A header line (phase, iteration, running stages), the message, the iterations' table."""
    meta, spec = run["metadata"], run.get("spec") or {}
    status = run_status(run)
    phase = status.phase or "Pending"
    head = f"{KIND} {meta['namespace']}/{meta['name']}: {phase}"
    if status.iteration is not None:
        head += f", iteration {status.iteration}"
        total = _total_iterations(spec)
        if total:
            head += f" of {total}"
    running = [s.key for s in status.steps if s.phase == "Running"]
    if running:
        head += f", running {', '.join(running)}"
    elif status.stage and phase not in ("Succeeded", "Failed"):
        head += f", stage {status.stage}"
    lines = [head]
    if status.message:
        lines.append(f"  {status.message}")
    lines.append("")
    lines.append(format_table(status.results) if status.results
                 else "(no iteration has results yet)")
    return "\n".join(lines)


def get(args) -> int:
    cluster = connect(args.kubeconfig, args.context, args.namespace)
    runs = list_runs(cluster, args.run, args.all_namespaces)
    if not runs:
        where = "any namespace" if args.all_namespaces else f'namespace "{cluster.namespace}"'
        print(f"No {KIND}s in {where}.", file=sys.stderr)
        return 0
    print("\n\n".join(format_run(r) for r in runs))
    return 0


# --- cream logs --------------------------------------------------------------------------------

def chosen_steps(status: CreamRunStatus, key: str | None) -> tuple[list[StepStatus], str | None]:
    """The steps whose output to show, and a note for the user when it is not the obvious one.

    Default: every running step (scoring of two models may run at once); when none runs, the
    last step that started (for a failed run, the one that failed)."""
    if key:
        found = [s for s in status.steps if s.key == key]
        if not found:
            known = ", ".join(s.key for s in status.steps) or "none yet"
            raise ViewError(f"no stage {key!r} in this run (started stages: {known})")
        return found, None
    running = [s for s in status.steps if s.phase == "Running"]
    if running:
        return running, None
    if not status.steps:
        raise ViewError("no stage has started yet; `cream get` shows the run's phase")
    last = max(status.steps, key=lambda s: s.start_time or "")
    return [last], f"no stage is running; the last one to start: {last.key} ({last.phase})"


def current_pods(cluster: Cluster, step: StepStatus) -> list[client.V1Pod]:
    """The Job's newest Pod per completion index (a retry replaces a failed Pod)."""
    pods = _api_call(cluster, lambda: cluster.core.list_namespaced_pod(
        cluster.namespace, label_selector=f"job-name={step.job}"),
        f"the Pods of Job {step.job}").items
    newest: dict[str, client.V1Pod] = {}
    for pod in sorted(pods, key=lambda p: p.metadata.creation_timestamp):
        index = (pod.metadata.annotations or {}).get("batch.kubernetes.io/job-completion-index")
        newest[index or ""] = pod
    return [newest[i] for i in sorted(newest)]


def wait_started(cluster: Cluster, pod: client.V1Pod, stop: threading.Event) -> None:
    """A container that has not started has no log yet (the API server answers 400)."""
    while not stop.is_set():
        current = cluster.core.read_namespaced_pod(pod.metadata.name, cluster.namespace)
        states = [c.state for c in current.status.container_statuses or []]
        if current.status.phase in ("Succeeded", "Failed") or any(
                s.running or s.terminated for s in states):
            return
        stop.wait(1.0)


def stream_pod(cluster: Cluster, pod: client.V1Pod, follow: bool,
               write: Callable[[bytes], None], stop: threading.Event) -> None:
    """Copy a Pod's output as it comes (pods/log?follow=true ends when the container does)."""
    wait_started(cluster, pod, stop)
    name = pod.metadata.name
    resp = _api_call(cluster, lambda: cluster.core.read_namespaced_pod_log(
        name, cluster.namespace, container=pod.spec.containers[0].name, follow=follow,
        _preload_content=False), f"the log of Pod {name}")
    try:
        for chunk in resp.stream(None, decode_content=False):
            write(chunk)
            if stop.is_set():
                break
    finally:
        resp.release_conn()


class _Tagged:
    """A writer that starts every line with a tag (several Pods share the terminal)."""

    def __init__(self, tag: str, out: Callable[[bytes], None]):
        self.tag, self.out, self.pending = tag.encode(), out, b""

    def __call__(self, chunk: bytes) -> None:
        *lines, self.pending = (self.pending + chunk).split(b"\n")
        if lines:
            self.out(b"".join(self.tag + line + b"\n" for line in lines))

    def close(self) -> None:
        if self.pending:
            self.out(self.tag + self.pending + b"\n")
            self.pending = b""


def logs(args) -> int:
    cluster = connect(args.kubeconfig, args.context, args.namespace)
    (run,) = list_runs(cluster, args.run, False)
    steps, note = chosen_steps(run_status(run), args.stage)
    if note:
        print(f"({note})", file=sys.stderr)
    targets = [(step, pod) for step in steps for pod in current_pods(cluster, step)]
    if not targets:
        raise ViewError(f"stage {steps[0].key}: its Pods are gone (Job {steps[0].job} was "
                        "deleted or its Pods garbage-collected)")
    lock, stop = threading.Lock(), threading.Event()
    errors: list[BaseException] = []

    def out(data: bytes) -> None:
        with lock:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()

    def follow(step: StepStatus, pod: client.V1Pod) -> None:
        # one Pod: its bytes as they are (progress bars redraw); several: each line tagged
        write = out if len(targets) == 1 else _Tagged(f"[{step.key} {pod.metadata.name}] ", out)
        try:
            stream_pod(cluster, pod, not args.no_follow, write, stop)
        except BaseException as exc:  # noqa: BLE001 - reported once the others are done
            errors.append(exc)
        finally:
            if isinstance(write, _Tagged):
                write.close()

    for step, pod in targets:
        print(f"==> {step.key}: Pod {pod.metadata.name} <==", file=sys.stderr, flush=True)
    threads = [threading.Thread(target=follow, args=t, daemon=True) for t in targets]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stop.set()
        return 130
    for exc in errors:
        if isinstance(exc, ViewError):
            raise exc
        raise ViewError(f"following the log: {exc}") from exc
    return 0


# --- the subcommands ---------------------------------------------------------------------------

def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then "
                                        "~/.kube/config), as kubectl")
    p.add_argument("--context", help="kubeconfig context (default: the current one)")
    p.add_argument("-n", "--namespace", help="namespace (default: the context's, or default)")


def _guarded(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ViewError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1

    return run


def add_commands(sub: argparse._SubParsersAction) -> None:
    """`cream get` and `cream logs`, added to the `cream` command's subcommands."""
    p = sub.add_parser("get", help="a CreamRun's iterations (consistency, pairs, accuracy), "
                                   "phase and stage, from the cluster")
    p.add_argument("run", nargs="?", help="the CreamRun (default: every one in the namespace)")
    p.add_argument("-A", "--all-namespaces", action="store_true",
                   help="every CreamRun in every namespace")
    _connection_flags(p)
    p.set_defaults(func=_guarded(get))

    p = sub.add_parser("logs", help="follow the output of a CreamRun's running stage")
    p.add_argument("run", help="the CreamRun")
    p.add_argument("--stage", help="a started stage's key instead, e.g. iter-1/sample "
                                   "(`cream get` lists the running ones)")
    p.add_argument("--no-follow", action="store_true",
                   help="print what the stage wrote so far and exit")
    _connection_flags(p)
    p.set_defaults(func=_guarded(logs))
