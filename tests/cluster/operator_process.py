"""The operator under test, as its own process (`python -m cream_operator`) against the harness.

Not a fixture module: tests start, kill and restart it as they need. Its /metrics and /healthz
listen on free loopback ports.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from kubernetes import client, watch

from kubeharness.process import die_with_parent, free_port


class OperatorProcess:
    def __init__(self, env: dict[str, str], namespace: str, log_dir: Path, storage_uri: str,
                 args: tuple[str, ...] = ()):
        self.env = {**env, "CREAM_STORAGE_URI": storage_uri, "PYTHONUNBUFFERED": "1"}
        self.args = tuple(args)  # more `cream operator` flags
        self.namespace = namespace
        self.log_dir = log_dir
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> OperatorProcess:
        self.starts += 1
        log = open(self.log_dir / f"operator-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cream_operator", "--namespace", self.namespace,
             "--metrics-port", str(self.metrics_port),
             "--liveness", f"http://127.0.0.1:{self.health_port}/healthz", *self.args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=die_with_parent,  # never outlive a pytest that was killed
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the operator exited: {self.log_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2)
                return self
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"the operator's health endpoint never answered:\n"
                             f"{self.log_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as a node failure or OOM would: no cleanup runs."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace")
                       for p in sorted(self.log_dir.glob("operator-*.log")))


class JobCreations:
    """Watches a namespace's Jobs and records every object created: name -> set of uids."""

    def __init__(self, api: client.ApiClient, namespace: str):
        self.batch = client.BatchV1Api(api)
        self.namespace = namespace
        self.uids: defaultdict[str, set[str]] = defaultdict(set)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> JobCreations:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(self.batch.list_namespaced_job, self.namespace,
                                      timeout_seconds=5):
                    job = event["object"]
                    self.uids[job.metadata.name].add(job.metadata.uid)
                    if self._stop.is_set():
                        break
            except Exception:  # noqa: BLE001 - the API server went away at teardown
                time.sleep(0.5)
            finally:
                w.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
