"""Find or build the pinned binaries the harness runs.

Lookup order for every tool: ``$KUBEBUILDER_ASSETS`` (the envtest convention), then ``$PATH``,
then the per-version cache; a candidate is used only when it reports the pinned version.
Missing tools are built from the Go module proxy into
``${XDG_CACHE_HOME:-~/.cache}/cream-operator/bin/<tool>-<version>/``, outside the repository, so
only the first run on a machine pays.

Kubernetes cannot be built with a plain ``go install``: k8s.io/kubernetes requires its staging
modules at v0.0.0 and points them at ./staging with replace directives, which do not apply to a
module that depends on it. We write a wrapper module that requires k8s.io/kubernetes and replaces
every staging module with its published v0.Y.Z tag; the list is read from the release's own go.mod.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .grafana import GRAFANA_MODULE_VERSION, GRAFANA_VERSION, grafana_build

KUBERNETES_VERSION = "v1.36.3"
# The etcd that Kubernetes v1.36.3 itself requires: building it in the same module changes none of
# Kubernetes' dependency versions and shares their compilation.
ETCD_VERSION = "v3.6.8"
HELM_VERSION = "v4.3.1"
# MinIO publishes no tagged Go module versions: this pseudo-version is its last community commit
# (2026-02-12). See s3server.py.
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
# Kueue: the newest release the module proxy serves whose k8s.io libraries are v0.36 (the cluster's
# minor). Built with its own go.mod's versions: every Kueue release needs newer golang.org/x/* than
# Kubernetes v1.36.3, so pinning it to Kubernetes' versions would build an untested combination.
KUEUE_VERSION = "v0.19.2"
KUEUE_COMMIT = "8eab68778fc1b52affe165fdf5af29d1e9b4f3cb"  # the tag's commit (the proxy's .info)
# kwok plays many (GPU) nodes and their Pods for the scale tests (kwok.py). v0.8.0 is built on
# k8s.io v0.36.1; its Kubernetes modules are raised to Kubernetes' own v0.36.3 (a patch step), so
# they are the ones the control plane's build already downloaded.
KWOK_VERSION = "v0.8.0"

KUBE_TOOLS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

BUILD_HINT = "make cluster-tools   (or: PYTHONPATH=tests .venv/bin/python -m kubeharness tools)"


class MissingBinary(RuntimeError):
    pass


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "cream-operator"


def _go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Never download a toolchain; resolve modules as needed; static binaries need no C toolchain.
    env.update(GOTOOLCHAIN="local", GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    return env


def go_binary() -> str:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    if not os.access(go, os.X_OK):
        raise MissingBinary("the Go toolchain (go) is needed to build the cluster binaries")
    return go


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_go_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout


@dataclass
class GoBuild:
    """One wrapper module and one ``go build`` of several packages (shared compilation)."""

    name: str  # cache key, e.g. kubernetes-v1.36.3
    requires: dict[str, str]
    # package path -> output binary name
    packages: dict[str, str]
    ldflags: list[str] = field(default_factory=list)
    # module whose own go.mod replaces (to ./staging) must be rewritten to published versions
    staging_of: tuple[str, str] | None = None
    # module whose go.sum seeds the wrapper's: its checksums were verified against the checksum
    # database when it was released, which the module proxy here cannot answer for every module
    sums_of: tuple[str, str] | None = None
    # (k8s.io/kubernetes, version): require every staging module that the first required module
    # names at that release's published version, so two builds share Kubernetes' modules
    align_staging_with: tuple[str, str] | None = None

    def workdir(self) -> Path:
        return cache_root() / "src" / self.name

    def _replaces(self) -> dict[str, str]:
        if not self.staging_of:
            return {}
        return _staging_modules(*self.staging_of)

    def _aligned_requires(self) -> dict[str, str]:
        requires = dict(self.requires)
        if self.align_staging_with:
            module, version = next(iter(self.requires.items()))
            named = set(re.findall(r"^\s*(k8s\.io/\S+)\s+v", _gomod(module, version), re.M))
            for mod, published in _staging_modules(*self.align_staging_with).items():
                if mod in named:
                    requires.setdefault(mod, published)
        return requires

    def build(self, outdir: Path, log=sys.stderr) -> float:
        """Build every package into outdir; return the wall time in seconds."""
        start = time.monotonic()
        work = self.workdir()
        work.mkdir(parents=True, exist_ok=True)
        lines = ["module cream-operator/toolbuild", "", "go 1.26", "", "require ("]
        lines += [f"\t{m} {v}" for m, v in self._aligned_requires().items()]
        lines.append(")")
        replaces = self._replaces()
        if replaces:
            lines += ["", "replace ("]
            lines += [f"\t{m} => {m} {v}" for m, v in sorted(replaces.items())]
            lines.append(")")
        (work / "go.mod").write_text("\n".join(lines) + "\n")
        if self.sums_of:
            module, version = self.sums_of
            info = json.loads(_run([go_binary(), "mod", "download", "-json",
                                    f"{module}@{version}"]))
            shutil.copyfile(Path(info["Dir"]) / "go.sum", work / "go.sum")
        tmp = work / "out"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        ldflags = " ".join(["-s", "-w", *self.ldflags])
        cmd = [go_binary(), "build", "-trimpath", "-ldflags", ldflags]
        cmd += ["-o", str(tmp) + "/", *self.packages]
        print(f"[kubeharness] building {self.name}: {' '.join(self.packages)}", file=log,
              flush=True)
        _run(cmd, cwd=work)
        outdir.mkdir(parents=True, exist_ok=True)
        for pkg, binname in self.packages.items():
            produced = tmp / _default_binary_name(pkg)
            os.replace(produced, outdir / binname)
        shutil.rmtree(tmp, ignore_errors=True)
        took = time.monotonic() - start
        print(f"[kubeharness] built {self.name} in {took:.0f}s", file=log, flush=True)
        return took


def _gomod(module: str, version: str) -> str:
    info = json.loads(_run([go_binary(), "mod", "download", "-json", f"{module}@{version}"]))
    return Path(info["GoMod"]).read_text()


def _staging_modules(module: str, version: str) -> dict[str, str]:
    """k8s.io/kubernetes' staging modules (its ./staging replaces) -> their published v0.Y.Z."""
    staged = re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/\S+", _gomod(module, version),
                        re.M)
    if not staged:
        raise RuntimeError(f"no staging replaces found in {module}@{version}'s go.mod")
    published = "v0." + version.removeprefix("v1.")
    return {mod: published for mod in staged}


def _default_binary_name(pkg: str) -> str:
    parts = pkg.split("/")
    # go names a binary after the last element, skipping a major-version suffix like /v3
    if re.fullmatch(r"v\d+", parts[-1]) and len(parts) > 1:
        return parts[-2]
    return parts[-1]


def _kube_ldflags(version: str) -> list[str]:
    major, minor = version.removeprefix("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return flags


def kubernetes_build() -> GoBuild:
    packages = {f"k8s.io/kubernetes/cmd/{t}": t for t in KUBE_TOOLS}
    packages["go.etcd.io/etcd/server/v3"] = "etcd"
    return GoBuild(
        name=f"kubernetes-{KUBERNETES_VERSION}",
        requires={
            "k8s.io/kubernetes": KUBERNETES_VERSION,
            "go.etcd.io/etcd/server/v3": ETCD_VERSION,
        },
        packages=packages,
        ldflags=_kube_ldflags(KUBERNETES_VERSION),
        staging_of=("k8s.io/kubernetes", KUBERNETES_VERSION),
    )


def helm_build() -> GoBuild:
    return GoBuild(
        name=f"helm-{HELM_VERSION}",
        requires={"helm.sh/helm/v4": HELM_VERSION},
        packages={"helm.sh/helm/v4/cmd/helm": "helm"},
        ldflags=[
            f"-X helm.sh/helm/v4/internal/version.version={HELM_VERSION}",
            "-X helm.sh/helm/v4/internal/version.gitTreeState=clean",
        ],
    )


def _minio_commit() -> str:
    return MINIO_VERSION.rsplit("-", 1)[1]


def minio_build() -> GoBuild:
    commit = _minio_commit()
    return GoBuild(
        name=f"minio-{MINIO_VERSION}",
        requires={"github.com/minio/minio": MINIO_VERSION},
        packages={"github.com/minio/minio": "minio"},
        ldflags=[f"-X github.com/minio/minio/cmd.CommitID={commit}",
                 f"-X github.com/minio/minio/cmd.ShortCommitID={commit}"],
    )


def kueue_build() -> GoBuild:
    pkg = "sigs.k8s.io/kueue/pkg/version"
    return GoBuild(
        name=f"kueue-{KUEUE_VERSION}",
        requires={"sigs.k8s.io/kueue": KUEUE_VERSION},
        packages={"sigs.k8s.io/kueue/cmd/kueue": "kueue"},
        # sigs.k8s.io/scheduler-library v0.1.0-alpha1 is missing from the checksum database
        sums_of=("sigs.k8s.io/kueue", KUEUE_VERSION),
        ldflags=[f"-X {pkg}.GitVersion={KUEUE_VERSION}", f"-X {pkg}.GitCommit={KUEUE_COMMIT}",
                 f"-X {pkg}.BuildDate=1970-01-01T00:00:00Z"],
    )


def kwok_build() -> GoBuild:
    return GoBuild(
        name=f"kwok-{KWOK_VERSION}",
        requires={"sigs.k8s.io/kwok": KWOK_VERSION},
        packages={"sigs.k8s.io/kwok/cmd/kwok": "kwok"},
        align_staging_with=("k8s.io/kubernetes", KUBERNETES_VERSION),
    )


@dataclass(frozen=True)
class Tool:
    name: str
    version: str
    cache_dir: str  # <tool>-<version> under bin/
    version_args: tuple[str, ...]
    build: object  # zero-argument function returning the GoBuild that produces it

    def cached(self) -> Path:
        return cache_root() / "bin" / self.cache_dir / self.name

    def reports_version(self, path: str) -> bool:
        try:
            out = subprocess.run(
                [path, *self.version_args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return self.version.removeprefix("v") in (out.stdout + out.stderr)


def _kube(name: str, args: tuple[str, ...] = ("--version",)) -> Tool:
    return Tool(name, KUBERNETES_VERSION, f"kubernetes-{KUBERNETES_VERSION}", args,
                kubernetes_build)


TOOLS: dict[str, Tool] = {
    "kube-apiserver": _kube("kube-apiserver"),
    "kube-controller-manager": _kube("kube-controller-manager"),
    "kube-scheduler": _kube("kube-scheduler"),
    "kubectl": _kube("kubectl", ("version", "--client")),
    "etcd": Tool("etcd", ETCD_VERSION, f"kubernetes-{KUBERNETES_VERSION}", ("--version",),
                 kubernetes_build),
    "helm": Tool("helm", HELM_VERSION, f"helm-{HELM_VERSION}", ("version",), helm_build),
    # minio reports its commit, not a version
    "minio": Tool("minio", _minio_commit(), f"minio-{MINIO_VERSION}", ("--version",),
                  minio_build),
    # kueue has no --version: it logs its gitVersion at start, then exits on the empty kubeconfig
    "kueue": Tool("kueue", KUEUE_VERSION, f"kueue-{KUEUE_VERSION}", ("--kubeconfig=/dev/null",),
                  kueue_build),
    # not a plain GoBuild: the source needs `wire gen` first (grafana.py)
    "grafana": Tool("grafana", GRAFANA_VERSION, f"grafana-{GRAFANA_MODULE_VERSION}",
                    ("--version",), grafana_build),
    "kwok": Tool("kwok", KWOK_VERSION, f"kwok-{KWOK_VERSION}", ("--version",), kwok_build),
}


def find(name: str) -> Path:
    """Path of a pinned tool, or MissingBinary naming the command that builds it."""
    tool = TOOLS[name]
    candidates = []
    if assets := os.environ.get("KUBEBUILDER_ASSETS"):
        candidates.append(Path(assets) / name)
    if on_path := shutil.which(name):
        candidates.append(Path(on_path))
    for cand in candidates:
        if os.access(cand, os.X_OK) and tool.reports_version(str(cand)):
            return cand
    cached = tool.cached()
    if os.access(cached, os.X_OK):
        return cached
    raise MissingBinary(
        f"{name} {tool.version} not found (looked in $KUBEBUILDER_ASSETS, $PATH and {cached}).\n"
        f"Build the cluster binaries with:  {BUILD_HINT}"
    )


def ensure(names: tuple[str, ...] | None = None, log=sys.stderr) -> dict[str, Path]:
    """Find every tool, building the missing ones (each build once); return name -> path."""
    names = names or tuple(TOOLS)
    found: dict[str, Path] = {}
    for name in names:
        try:
            found[name] = find(name)
        except MissingBinary:
            tool = TOOLS[name]
            gobuild = tool.build()
            # Two test sessions (or worktrees) may ask for the same tool at once: one builds,
            # the other waits for it and finds the result.
            with build_lock(gobuild.name):
                try:
                    found[name] = find(name)
                    continue
                except MissingBinary:
                    pass
                gobuild.build(tool.cached().parent, log=log)
            found[name] = find(name)
    return found


@contextmanager
def build_lock(name: str) -> Iterator[None]:
    """An exclusive lock per build, held across processes (flock on a file in the cache)."""
    path = cache_root() / "locks" / f"{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
