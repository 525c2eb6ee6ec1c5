"""A real Prometheus (Debian's package) scraping given targets on loopback every second."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .process import Service, free_port, wait_for

INSTALL_HINT = "make cluster-tools   (it runs: apt-get update && apt-get install -y prometheus)"


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        from .binaries import MissingBinary

        raise MissingBinary(f"prometheus not found on PATH. Install it with:  {INSTALL_HINT}")
    return path


@dataclass
class Prometheus:
    state: Path
    targets: list[str] = field(default_factory=list)  # "127.0.0.1:PORT"
    scrape_interval: str = "1s"
    # whole scrape_configs entries, for anything beyond a static list (paths, relabelling, ...)
    extra_scrape_configs: list[dict] = field(default_factory=list)
    tie_to_parent: bool = True
    port: int = 0
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.state.mkdir(parents=True, exist_ok=True)
        scrape = list(self.extra_scrape_configs)
        if self.targets:
            scrape.insert(0, {"job_name": "test", "static_configs": [{"targets": self.targets}]})
        cfg = {"global": {"scrape_interval": self.scrape_interval,
                          "evaluation_interval": self.scrape_interval},
               "scrape_configs": scrape}
        conf = self.state / "prometheus.yml"
        conf.write_text(yaml.safe_dump(cfg))
        self.port = free_port()
        self.service = Service(f"prometheus-{self.state.name}", [
            prometheus_binary(), f"--config.file={conf}",
            f"--storage.tsdb.path={self.state / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ], self.state, tie_to_parent=self.tie_to_parent).start()
        try:
            wait_for(lambda: urllib.request.urlopen(f"{self.url}/-/ready", timeout=2).status
                     == 200, 60, "Prometheus /-/ready", self.service)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    def query(self, promql: str) -> list[dict]:
        """Instant query through the HTTP API; returns data.result (vector entries)."""
        qs = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{qs}", timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: {body}")
        return body["data"]["result"]

    def wait_for_value(self, promql: str, timeout: float = 30.0) -> float:
        """Poll until the query returns a sample; return the first sample's value."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if result:
                return float(result[0]["value"][1])
            if time.monotonic() > deadline:
                raise TimeoutError(f"no sample for {promql!r} after {timeout:.0f}s")
            time.sleep(0.5)
