"""A real Grafana server for the dashboard test: built from the Go module proxy, run on loopback.

Why a build of our own: Grafana publishes no Go module versions (its tags are not semver for Go),
and the proxy serves exactly one pseudo-version of github.com/grafana/grafana that builds,
``v1.9.2-0.20230609164553-81d85ce8028d`` (found by trying): the commit Grafana released as
v10.0.0 (its package.json still says 10.0.0-preview; the release build stamps 10.0.0).
Its ``pkg/server/wire_gen.go`` is generated, not shipped, so a ``go install`` cannot build it.
The recipe: copy the module source, run ``wire gen -tags oss ./pkg/server`` with wire v0.7.0
(the v0.5.0 that Grafana's go.mod pins panics on current Go), then build ``./pkg/cmd/grafana``
inside that copy, as the main module, so Grafana's own replace directives apply. Never
``go mod tidy`` it: the pinned dependency set is the one that compiles. SQLite needs cgo.

The frontend bundle is not built (that needs the Node toolchain and Grafana's yarn workspace), so
the web UI is blank; the HTTP API, which is what the test drives, works. Next to the binary go
the few source files the server reads at start-up (conf/, email and page templates, the core
plugins' ``plugin.json``, from which the registry knows the Prometheus datasource).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from dataclasses import dataclass
from pathlib import Path

from .process import Service, free_port, wait_for

GRAFANA_MODULE = "github.com/grafana/grafana"
GRAFANA_MODULE_VERSION = "v1.9.2-0.20230609164553-81d85ce8028d"
# The release that commit is; the binary reports it (`grafana --version`), as Grafana's own build.
GRAFANA_VERSION = "10.0.0"
GRAFANA_COMMIT = "81d85ce8028d"
WIRE_VERSION = "v0.7.0"
START_ATTEMPTS = 3
FIRST_START_RACE = "failed to create default organization"


@dataclass
class GrafanaBuild:
    """Builds the grafana binary plus its home directory (conf/, core plugin manifests)."""

    name: str = f"grafana-{GRAFANA_MODULE_VERSION}"

    def build(self, outdir: Path, log=sys.stderr) -> float:
        from .binaries import MissingBinary, _go_env, _run, cache_root, go_binary

        start = time.monotonic()
        go = go_binary()
        if not shutil.which(os.environ.get("CC", "gcc")) and not shutil.which("cc"):
            raise MissingBinary("Grafana's SQLite driver needs a C compiler for cgo: "
                                "apt-get install -y gcc (or set CC)")
        print(f"[kubeharness] building {self.name}: wire gen, then ./pkg/cmd/grafana", file=log,
              flush=True)
        info = json.loads(_run([go, "mod", "download", "-json",
                                f"{GRAFANA_MODULE}@{GRAFANA_MODULE_VERSION}"]))
        src = cache_root() / "src" / self.name
        _rmtree(src)
        # The module cache is read-only: the copy must be writable for wire_gen.go (and go.sum).
        shutil.copytree(info["Dir"], src, copy_function=shutil.copyfile,
                        ignore=shutil.ignore_patterns("node_modules", "e2e", "docs", "devenv"))
        _make_writable(src)
        env = {**_go_env(), "CGO_ENABLED": "1"}
        _run_env([go, "run", f"github.com/google/wire/cmd/wire@{WIRE_VERSION}", "gen", "-tags",
                  "oss", "./pkg/server"], src, env)
        tmp = src / "out"
        ldflags = " ".join(["-s", "-w", f"-X main.version={GRAFANA_VERSION}",
                            f"-X main.commit={GRAFANA_COMMIT}", "-X main.buildBranch=main"])
        _run_env([go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp / "grafana"),
                  "./pkg/cmd/grafana"], src, env)
        outdir.mkdir(parents=True, exist_ok=True)
        _install_home(src, outdir)
        os.replace(tmp / "grafana", outdir / "grafana")  # last: the binary marks the cache done
        _rmtree(src)
        took = time.monotonic() - start
        print(f"[kubeharness] built {self.name} in {took:.0f}s", file=log, flush=True)
        return took


def grafana_build() -> GrafanaBuild:
    return GrafanaBuild()


def _run_env(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")


def _make_writable(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o644)


def _rmtree(path: Path) -> None:
    if path.exists():
        _make_writable(path)
        shutil.rmtree(path)


def _install_home(src: Path, home: Path) -> None:
    """Grafana's --homepath: conf/defaults.ini, the email templates (parsed at start-up), the
    page template, and the core plugins' manifests (the plugin registry reads them)."""
    for sub in ("conf", "public/emails", "public/views"):
        shutil.rmtree(home / sub, ignore_errors=True)
        shutil.copytree(src / sub, home / sub)
    plugins = src / "public" / "app" / "plugins"
    for manifest in plugins.glob("*/*/plugin.json"):
        dest = home / "public" / "app" / "plugins" / manifest.relative_to(plugins)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(manifest, dest)


def grafana_binary() -> Path:
    """The pinned grafana (built into the cache by `make cluster-tools`)."""
    from .binaries import find

    return find("grafana")


@dataclass
class Grafana:
    """One Grafana server on a free loopback port, its database and files under `state`."""

    state: Path
    tie_to_parent: bool = True
    port: int = 0
    password: str = ""
    service: Service | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Grafana:
        binary = grafana_binary()
        home = binary.parent  # conf/ and the core plugins' manifests were installed beside it
        # a fresh database each start: the admin password below applies only to a new one
        shutil.rmtree(self.state / "data", ignore_errors=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = b64encode(os.urandom(12)).decode().rstrip("=").replace("/", "_")
        for kind in ("datasources", "dashboards", "plugins", "alerting", "notifiers"):
            (self.state / "provisioning" / kind).mkdir(parents=True, exist_ok=True)
        ini = self.state / "grafana.ini"
        ini.write_text(_ini(self.state, self.port, self.password))
        for attempt in range(1, START_ATTEMPTS + 1):
            self.service = Service(f"grafana-{self.state.name}", [
                str(binary), "server", f"--homepath={home}", f"--config={ini}",
            ], self.state, cwd=self.state, tie_to_parent=self.tie_to_parent)
            log = self.service.log
            logged = log.stat().st_size if log.exists() else 0
            self.service.start()
            try:
                # the first start creates the SQLite database (several hundred migrations)
                wait_for(lambda: self.get("/api/health").get("database") == "ok", 180,
                         "Grafana /api/health", self.service)
                return self
            except RuntimeError:  # it exited
                self.stop()
                if FIRST_START_RACE not in _read_from(log, logged) or attempt == START_ATTEMPTS:
                    raise
                # Grafana 10.0.0 sometimes fails its first start on a new database this way, as
                # if its main organisation were created twice (grafana/grafana#77252 on this
                # very commit; #68644 only silenced the org.id variant). Seen here under load.
                # A new database, and again.
                shutil.rmtree(self.state / "data", ignore_errors=True)
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
            self.service = None

    # --- the HTTP API, as the admin --------------------------------------------------------
    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        token = b64encode(f"admin:{self.password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise GrafanaError(f"{method} {path}: {exc.code} {exc.read().decode()[:2000]}") \
                from None

    def get(self, path: str) -> dict:
        return self.request("GET", path)

    def post(self, path: str, body: dict) -> dict:
        return self.request("POST", path, body)

    def add_prometheus(self, prometheus_url: str, uid: str = "prometheus",
                       scrape_interval: str = "1s") -> dict:
        """A Prometheus datasource (the default one), as the Helm charts provision it."""
        return self.post("/api/datasources", {
            "name": f"Prometheus {uid}", "uid": uid, "type": "prometheus", "access": "proxy",
            "url": prometheus_url, "isDefault": True,
            # Grafana's $__rate_interval is at least four scrape intervals: tell it ours
            "jsonData": {"timeInterval": scrape_interval, "httpMethod": "POST"},
        })

    def import_dashboard(self, dashboard: dict) -> dict:
        """Save a dashboard JSON (as a user's import does); returns uid, url, version."""
        dash = {**dashboard, "id": None}
        return self.post("/api/dashboards/db", {"dashboard": dash, "overwrite": True,
                                                "message": "imported by kubeharness"})

    def query(self, queries: list[dict], start: str = "now-5m", end: str = "now") -> dict:
        """Grafana's /api/ds/query (what a panel sends): refId -> that query's result."""
        body = self.post("/api/ds/query", {"queries": queries, "from": start, "to": end})
        return body.get("results", {})


class GrafanaError(RuntimeError):
    pass


def _read_from(path: Path, offset: int) -> str:
    """A log file's text from byte `offset` on: what one run of the service wrote."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read().decode(errors="replace")


def _ini(state: Path, port: int, password: str) -> str:
    return f"""\
[paths]
data = {state / "data"}
logs = {state / "logs"}
plugins = {state / "plugins"}
provisioning = {state / "provisioning"}

[server]
http_addr = 127.0.0.1
http_port = {port}

[security]
admin_user = admin
admin_password = {password}

[analytics]
reporting_enabled = false
check_for_updates = false
check_for_plugin_updates = false
feedback_links_enabled = false

[news]
news_feed_enabled = false

[log]
mode = console
level = warn
"""
