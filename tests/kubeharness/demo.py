"""`make cluster-demo`: the operator at work on the local test cluster, in one command.

What a new user would otherwise have to set up by hand before `kubectl apply -f
examples/tiny.yaml` can start anything: the cluster (`kubeharness up`, reused when running), the
chart installed by Helm (the operator runs from its Deployment, as a Pod of the node agent), a
bucket in the cluster's S3 server, the S3 Secret and the storage URI (chart values). Then it
applies the example, shows `kubectl get creamruns -w` until the run ends, prints `cream get`, and
leaves Prometheus (scraping the operator) and Grafana (the chart's dashboard imported) running
for a look, until `make cluster-down`.

    PYTHONPATH=tests .venv/bin/python -m kubeharness.demo [--state build/cluster] [--no-grafana]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import yaml
from kubernetes import client, config

from . import binaries
from .grafana import Grafana
from .process import free_port, stop_group
from .prometheus import Prometheus

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cream-operator"
DASHBOARD = CHART / "dashboards" / "cream.json"
EXAMPLE = ROOT / "examples" / "tiny.yaml"
NAMESPACE = "cream-demo"
RELEASE = "cream"
BUCKET = "cream-demo"
RUN = "tiny"
GROUP, VERSION, PLURAL = "cream.dev", "v1alpha1", "creamruns"


def say(msg: str) -> None:
    print(f"\n[demo] {msg}", flush=True)


def cluster_up(state: Path) -> dict:
    """Start the cluster unless it runs (kubeharness up is idempotent); its details."""
    subprocess.run([sys.executable, "-m", "kubeharness", "up", f"--state={state}"], check=True,
                   stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "tests")})
    return json.loads((state / "cluster.json").read_text())


def tool_env(kubeconfig: str) -> dict[str, str]:
    """KUBECONFIG and the pinned kubectl and helm first on PATH."""
    dirs = dict.fromkeys(str(binaries.find(t).parent) for t in ("kubectl", "helm"))
    return {**os.environ, "KUBECONFIG": kubeconfig,
            "PATH": os.pathsep.join([*dirs, os.environ.get("PATH", "")])}


def run(cmd: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return proc


def make_bucket(s3: dict) -> None:
    s3c = boto3.client("s3", endpoint_url=s3["endpoint"], aws_access_key_id=s3["access_key"],
                       aws_secret_access_key=s3["secret_key"], region_name=s3["region"])
    with contextlib.suppress(s3c.exceptions.BucketAlreadyOwnedByYou):
        s3c.create_bucket(Bucket=BUCKET)


def ensure_namespace(core: client.CoreV1Api) -> None:
    try:
        core.create_namespace({"metadata": {"name": NAMESPACE}})
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + 60
    while True:  # Pods are rejected until the namespace's default ServiceAccount exists
        try:
            core.read_namespaced_service_account("default", NAMESPACE)
            return
        except client.ApiException as exc:
            if exc.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def ports(demo_dir: Path) -> dict[str, int]:
    """The operator's ports, kept across demos so that `helm upgrade` changes nothing."""
    path = demo_dir / "ports.json"
    if path.exists():
        return json.loads(path.read_text())
    chosen = {"health": free_port(), "metrics": free_port()}
    path.write_text(json.dumps(chosen))
    return chosen


def install_chart(env: dict[str, str], s3: dict, demo_dir: Path, port: dict[str, int]) -> None:
    values = {
        "watchNamespaces": [NAMESPACE],
        # the node agent runs Pods on the host's loopback: free ports, no cluster DNS
        "ports": port,
        "tests": {"host": "127.0.0.1"},
        "s3": {"storageUri": f"s3://{BUCKET}/runs", "createSecret": True,
               "accessKey": s3["access_key"], "secretKey": s3["secret_key"],
               "endpoint": s3["endpoint"], "region": s3["region"]},
        "stages": {"defaultGpus": 0},  # the tiny run asks for none anyway
    }
    values_file = demo_dir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    run(["helm", "upgrade", "--install", RELEASE, str(CHART), "--namespace", NAMESPACE,
         "--values", str(values_file), "--wait", "--timeout", "300s"], env, timeout=600)
    url = f"http://127.0.0.1:{port['health']}/healthz"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"the operator's health endpoint {url} never answered; its log: "
                         f"kubectl logs -n {NAMESPACE} deploy/{RELEASE}-cream-operator")
            time.sleep(1)


def restart_observer(state: Path, name: str, service) -> None:
    """Record an observer (Prometheus, Grafana) in the cluster's pid files, replacing the one a
    previous demo left: `make cluster-down` stops it with the cluster."""
    pidfile = state / "pids" / f"demo-{name}.pid"
    if service is None:
        with contextlib.suppress(OSError, ValueError):
            stop_group(int(pidfile.read_text()), grace=10)
        pidfile.unlink(missing_ok=True)
    else:
        pidfile.write_text(str(service.pid))


def start_observers(state: Path, demo_dir: Path, metrics_port: int, grafana: bool):
    for name in ("prometheus", "grafana"):
        restart_observer(state, name, None)
    prom = Prometheus(demo_dir / "prometheus", [f"127.0.0.1:{metrics_port}"],
                      scrape_interval="5s", tie_to_parent=False).start()
    restart_observer(state, "prometheus", prom.service)
    if not grafana:
        return prom, None
    try:
        binaries.find("grafana")
    except binaries.MissingBinary as exc:
        print(f"[demo] no Grafana: {exc}", flush=True)
        return prom, None
    try:  # an extra: the run goes on without it
        graf = Grafana(demo_dir / "grafana", tie_to_parent=False).start()
    except (RuntimeError, TimeoutError) as exc:
        print(f"[demo] Grafana did not start, going on without it: {exc}", flush=True)
        return prom, None
    restart_observer(state, "grafana", graf.service)
    graf.add_prometheus(prom.url, uid="prometheus", scrape_interval="5s")
    graf.import_dashboard(json.loads(DASHBOARD.read_text()))
    return prom, graf


def start_run(custom: client.CustomObjectsApi, env: dict[str, str]) -> None:
    """A fresh CreamRun (a new uid, so every stage runs again)."""
    try:
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, RUN)
        say(f"deleting the previous CreamRun {RUN}")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, RUN)
            time.sleep(1)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
    # JSON, not YAML: kubectl reads YAML 1.1, where the key `n` would be false
    doc = json.dumps(yaml.safe_load(EXAMPLE.read_text()))
    run(["kubectl", "apply", "-n", NAMESPACE, "-f", "-"], env, input=doc)


def follow(custom: client.CustomObjectsApi, env: dict[str, str], timeout: float) -> dict:
    """`kubectl get creamruns -w` on the terminal (repeated rows left out) until the run ends."""
    watcher = subprocess.Popen(["kubectl", "get", "creamruns", "-n", NAMESPACE, "-w"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def show() -> None:
        last = None
        for line in watcher.stdout:
            cells = line.split()
            key = cells[:-1]  # without AGE, which changes on every row
            if key != last:
                print("  " + line.rstrip(), flush=True)
                last = key

    printer = threading.Thread(target=show, daemon=True)
    printer.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, RUN)
            status = obj.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                time.sleep(1.5)  # let kubectl print the last row
                return status
            if time.monotonic() > deadline:
                sys.exit(f"the run did not finish within {timeout:.0f}s; see `cream get {RUN} "
                         f"-n {NAMESPACE}` and `cream logs {RUN} -n {NAMESPACE}`")
            time.sleep(2)
    finally:
        watcher.terminate()
        watcher.wait(10)
        printer.join(5)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kubeharness.demo", description=__doc__.splitlines()[0])
    p.add_argument("--state", type=Path, default=Path("build/cluster"))
    p.add_argument("--timeout", type=float, default=2400, help="seconds the run may take")
    p.add_argument("--no-grafana", action="store_true")
    args = p.parse_args(argv)
    state = args.state.resolve()
    t0 = time.monotonic()

    say(f"starting the test cluster (state in {state}; reused when it runs)")
    info = cluster_up(state)
    kubeconfig = info["kubeconfig"]
    env = tool_env(kubeconfig)
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    api = client.ApiClient(cfg)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    demo_dir = state / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)

    say(f"S3: bucket {BUCKET} on the cluster's MinIO at {info['s3']['endpoint']}")
    make_bucket(info["s3"])
    say(f"helm upgrade --install {RELEASE} charts/cream-operator -n {NAMESPACE} (the CRD, "
        "the operator's Deployment, RBAC, the S3 Secret; storage s3://cream-demo/runs)")
    ensure_namespace(core)
    port = ports(demo_dir)
    install_chart(env, info["s3"], demo_dir, port)
    print(f"  the operator is up: /healthz on 127.0.0.1:{port['health']}, /metrics on "
          f"127.0.0.1:{port['metrics']}", flush=True)

    say("Prometheus scraping the operator" + ("" if args.no_grafana else ", and Grafana"))
    prom, graf = start_observers(state, demo_dir, port["metrics"], not args.no_grafana)

    say(f"kubectl apply -n {NAMESPACE} -f examples/tiny.yaml   (SFT, a baseline evaluation, "
        "then two CREAM iterations: 15 stage Jobs)")
    start_run(custom, env)
    say(f"kubectl get creamruns -n {NAMESPACE} -w")
    status = follow(custom, env, args.timeout)

    say(f"cream get {RUN} -n {NAMESPACE}")
    cream = str(Path(sys.executable).with_name("cream"))
    got = subprocess.run([cream, "get", RUN, "-n", NAMESPACE], env=env, capture_output=True,
                         text=True)
    print(got.stdout + got.stderr, end="", flush=True)

    kubectl = binaries.find("kubectl")
    say(f"done in {time.monotonic() - t0:.0f}s: CreamRun {RUN} {status.get('phase')}")
    print(f"""
  Prometheus  {prom.url}/graph?g0.expr=cream_consistency_rate&g0.tab=1
              curl -s '{prom.url}/api/v1/query?query=cream_eval_accuracy'""")
    if graf is not None:
        print(f"""\
  Grafana     {graf.url}/d/cream-operator  (user admin, password {graf.password}; the
              HTTP API works, the web UI is blank: the frontend bundle is not built here)
              curl -s -u admin:{graf.password} {graf.url}/api/dashboards/uid/cream-operator""")
    print(f"""\
  kubectl     export KUBECONFIG={kubeconfig}
              {kubectl} get creamruns,jobs -n {NAMESPACE}
  cream       .venv/bin/cream get -n {NAMESPACE}; .venv/bin/cream logs {RUN} -n {NAMESPACE}
  stop        make cluster-down   (the cluster, the operator, Prometheus and Grafana)
""", flush=True)
    if status.get("phase") != "Succeeded":
        print(f"[demo] the run failed: {status.get('message')}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
