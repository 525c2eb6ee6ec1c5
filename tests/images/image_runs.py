"""What the images must run: the operator's Job manifests for the examples, the chart's
Deployment, and a command run inside a built image (buildah, as the image's user)."""

from __future__ import annotations

import os
import secrets
import subprocess
from pathlib import Path

import yaml

from cream_operator import jobs, pipeline, specfile
from cream_operator.config import OperatorConfig
from kubeharness import binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "cream-operator"
RUN = {"metadata": {"name": "tiny", "namespace": "ml", "uid": "0b1e-uid"}}


def all_job_manifests() -> list[dict]:
    """Every Job the operator creates for the example runs (tiny on CPU, every step kind on the
    tiny model, 8B on 8-GPU nodes)."""
    out = []
    for example in ("tiny.yaml", "tiny-schedule.yaml", "llama3-8b.yaml"):
        spec = specfile.parse(yaml.safe_load((ROOT / "examples" / example).read_text())).spec
        for step in pipeline.plan(spec, "s3://b/runs/ml/tiny/0b1e-uid"):
            out.append(jobs.job_manifest(RUN, spec, step, OperatorConfig()))
    return out


def container_of(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def chart_deployment() -> dict:
    """The operator Deployment that `helm template` renders with the chart's defaults."""
    rendered = subprocess.run([str(binaries.find("helm")), "template", "cream", str(CHART)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    (deploy,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment"]
    return deploy


def run_in_image(reference: str, argv: list[str], user: str | None = None,
                 timeout: float = 600) -> subprocess.CompletedProcess:
    """argv in a fresh container of the image, as its USER (or `user`) in its WORKDIR with its
    ENV."""
    name = f"imagetest-{os.getpid()}-{secrets.token_hex(3)}"
    subprocess.run(["buildah", "from", "--pull-never", "--name", name, reference], check=True,
                   capture_output=True)
    try:
        as_user = ["--user", user] if user else []
        return subprocess.run(["buildah", "run", "--isolation", "chroot", *as_user, name, "--",
                               *argv], capture_output=True, text=True, timeout=timeout)
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)
