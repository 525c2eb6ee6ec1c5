"""Helpers of the chart tests: the pinned helm binary, rendering, and the rendered objects."""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from pathlib import Path

import yaml

from kubeharness import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cream-operator"
DASHBOARD = CHART / "dashboards" / "cream.json"
RELEASE = "cream"
NAMESPACE = "cream-system"


def helm_binary() -> str:
    """The pinned helm (kubeharness.binaries); MissingBinary names the command that builds it."""
    return str(binaries.find("helm"))


def helm(*args: str, check: bool = True, values: dict | None = None,
         tmp: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [helm_binary(), *args]
    if values is not None:
        if tmp is None:
            raise ValueError("values need a tmp directory for their file")
        digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]
        path = tmp / f"values-{digest}.yaml"
        path.write_text(yaml.safe_dump(values))
        cmd += ["--values", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def template(tmp: Path, values: dict | None = None, *extra: str, check: bool = True,
             namespace: str = NAMESPACE) -> subprocess.CompletedProcess:
    """`helm template` of the chart (hooks, i.e. the helm test Pod, included)."""
    return helm("template", RELEASE, str(CHART), "--namespace", namespace, *extra,
                values=values or {}, tmp=tmp, check=check)


def render(tmp: Path, values: dict | None = None, *extra: str,
           namespace: str = NAMESPACE) -> list[dict]:
    out = template(tmp, values, *extra, namespace=namespace).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: Iterable[dict], kind: str) -> dict:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def operator_container(docs: Iterable[dict]) -> dict:
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "operator"]
    return container


def env_of(container: dict) -> dict[str, str]:
    """Plain-value environment of a container (valueFrom entries are left out)."""
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def load_dashboard_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query of the dashboard: panel targets and label_values() variables."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((f"panel {p['title']!r} target {t['refId']}", t["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            selector = query.strip().removeprefix("label_values(").rsplit(",", 1)[0]
            out.append((f"variable {var['name']}", selector))
    return out
