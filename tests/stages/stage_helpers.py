"""Running a stage as the operator does, and inspecting what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

TINY = "builtin://tiny-llama"


def run_stage(stage: str, request: dict, workdir: Path, name: str | None = None,
              env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m cream_stages <stage> --request <file>`, as the operator runs it."""
    path = workdir / f"{name or stage}.request.json"
    path.write_text(json.dumps(request))
    full_env = {**os.environ, "CREAM_TERMINATION_LOG": str(workdir / f"{name or stage}.term"),
                **(env or {})}
    return subprocess.run([sys.executable, "-m", "cream_stages", stage, "--request", str(path)],
                          capture_output=True, text=True, env=full_env, timeout=600)


def run_stage_torchrun(stage: str, request: dict, workdir: Path, nproc: int,
                       name: str | None = None) -> subprocess.CompletedProcess:
    """The stage under torchrun with `nproc` processes on this machine, as the operator launches
    a multi-GPU stage (`--standalone`: a rendezvous on a free local port)."""
    path = workdir / f"{name or stage}.request.json"
    path.write_text(json.dumps(request))
    env = {**os.environ, "CREAM_TERMINATION_LOG": str(workdir / f"{name or stage}.term")}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "cream_stages", stage,
                           "--request", str(path)],
                          capture_output=True, text=True, env=env, timeout=900)


def termination_message(workdir: Path, name: str) -> str:
    path = workdir / f"{name}.term"
    return path.read_text() if path.exists() else ""


def mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns
            for p in sorted(directory.rglob("*")) if p.is_file()}


def cream_run(doc: dict, workdir: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`cream run` of a CreamRun document, as a user runs it; returns the process and --out."""
    spec_file = workdir / "run.yaml"
    spec_file.write_text(yaml.safe_dump(doc))
    out = workdir / "out"
    proc = subprocess.run([sys.executable, "-m", "cream_operator.cli", "run", str(spec_file),
                           "--out", str(out)], cwd=workdir, capture_output=True, text=True,
                          timeout=1200)
    return proc, out
