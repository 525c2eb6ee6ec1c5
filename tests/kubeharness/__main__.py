"""python -m kubeharness tools | up | down | status | serve

tools   build or fetch every binary (Kubernetes, etcd, kubectl, helm, the S3 server, Kueue,
        Grafana, kwok) and install Prometheus (and a C compiler for Grafana's cgo, if none); cheap
        when everything is cached. Needs only the standard library.
up      start a cluster (control plane, node agent, S3) in the background; print the kubeconfig.
down    stop the cluster that `up` started in the same state directory.
status  print the running cluster's connection details (state/cluster.json).
serve   run a cluster in the foreground until SIGTERM (what `up` runs).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import binaries

DEFAULT_STATE = Path("build/cluster")


def apt_install(command: str, packages: list[str], why: str) -> str:
    """`command` from PATH, or installed from Debian's packages when it is missing (as root)."""
    if found := shutil.which(command):
        return found
    if os.geteuid() != 0:
        sys.exit(f"{command} is missing ({why}); install it as root: apt-get update && "
                 f"apt-get install -y {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"[kubeharness] installing {' '.join(packages)} from Debian's packages ({why})",
          file=sys.stderr)
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    return shutil.which(command) or f"/usr/bin/{command}"


def install_prometheus() -> str:
    return apt_install("prometheus", ["prometheus"], "the metrics tests scrape the operator")


def install_c_compiler() -> str:
    # libc6-dev is only a recommendation of gcc, and cgo needs its headers
    return shutil.which("cc") or apt_install(
        "gcc", ["gcc", "libc6-dev"], "Grafana's SQLite driver is built with cgo")


def cmd_tools(args) -> None:
    t0 = time.monotonic()
    install_c_compiler()
    found = binaries.ensure()
    found_prom = install_prometheus()
    for name, path in sorted(found.items()):
        print(f"{name:24} {path}")
    print(f"{'prometheus':24} {found_prom}")
    print(f"[kubeharness] tools ready in {time.monotonic() - t0:.1f}s", file=sys.stderr)


def _info_path(state: Path) -> Path:
    return state / "cluster.json"


def cmd_serve(args) -> None:
    from .cluster import Cluster
    from .s3server import S3Server

    state = args.state.resolve()
    cluster = Cluster(state, gpus=args.gpus, nodes=args.nodes)
    s3 = S3Server(state)
    stopping = False

    def on_term(signum, frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        cluster.start()
        s3.start()
        info = {
            "kubeconfig": str(cluster.kubeconfig),
            "server": cluster.control_plane.server,
            "node": cluster.node_name, "nodes": list(cluster.agents), "gpus": cluster.gpus,
            "pods_dir": str(cluster.pods_dir),
            "logs_dir": str(state / "logs"),
            "s3": {"endpoint": s3.endpoint, "access_key": s3.access_key,
                   "secret_key": s3.secret_key, "region": s3.region},
            "started_in_s": round(cluster.started_in, 1),
        }
        _info_path(state).write_text(json.dumps(info, indent=2))
        while True:
            time.sleep(3600)
    finally:
        _info_path(state).unlink(missing_ok=True)
        s3.stop()
        cluster.stop()


def cmd_up(args) -> None:
    from .process import stop_pidfiles

    state = args.state.resolve()
    info = _info_path(state)
    pidfile = state / "serve.pid"
    if info.exists() and pidfile.exists():
        print(json.loads(info.read_text())["kubeconfig"])
        return
    stop_pidfiles(state)  # leftovers of a cluster that died
    state.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(state / "serve.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubeharness", "serve", f"--state={state}",
             f"--gpus={args.gpus}", f"--nodes={args.nodes}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,  # outlives this command, like a daemon
        )
    pidfile.write_text(str(proc.pid))
    t0 = time.monotonic()
    while not info.exists():
        if proc.poll() is not None:
            tail = (state / "serve.log").read_text(errors="replace").splitlines()[-25:]
            sys.exit("cluster failed to start:\n" + "\n".join(tail))
        if time.monotonic() - t0 > 300:
            sys.exit(f"cluster did not start within 300s; see {state / 'serve.log'}")
        time.sleep(0.2)
    details = json.loads(info.read_text())
    print(f"[kubeharness] cluster up in {time.monotonic() - t0:.1f}s; "
          f"S3 at {details['s3']['endpoint']}; details in {info}", file=sys.stderr)
    print(details["kubeconfig"])


def cmd_down(args) -> None:
    from .process import stop_group, stop_pidfiles

    state = args.state.resolve()
    pidfile = state / "serve.pid"
    if pidfile.exists():
        with contextlib.suppress(ValueError):
            stop_group(int(pidfile.read_text().strip()), grace=30)
        pidfile.unlink(missing_ok=True)
    leftovers = stop_pidfiles(state)  # in case `serve` was killed without its cleanup
    _info_path(state).unlink(missing_ok=True)
    print(f"[kubeharness] cluster in {state} stopped"
          + (f" (also stopped: {', '.join(leftovers)})" if leftovers else ""), file=sys.stderr)


def cmd_status(args) -> None:
    info = _info_path(args.state.resolve())
    if not info.exists():
        sys.exit(f"no cluster running in {args.state}")
    print(info.read_text())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="kubeharness", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("tools", "up", "down", "status", "serve"):
        sp = sub.add_parser(name)
        sp.add_argument("--state", type=Path, default=DEFAULT_STATE)
        sp.add_argument("--gpus", type=int, default=8, help="nvidia.com/gpu per node")
        sp.add_argument("--nodes", type=int, default=1, help="node agents, each its own Node")
    args = p.parse_args(argv)
    {"tools": cmd_tools, "up": cmd_up, "down": cmd_down, "status": cmd_status,
     "serve": cmd_serve}[args.cmd](args)


if __name__ == "__main__":
    main()
