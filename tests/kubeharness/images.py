"""Images for the node agent: a container whose image is in this machine's buildah storage
(`make images`) runs from it, as a runtime would run it.

What a container gets from its image: a root filesystem of its own (a buildah working container:
the image's layers under a private writable layer, removed when the container ends), the image's
Env under the Pod's, its Entrypoint and Cmd unless the Pod's command and args replace them
(Kubernetes' rules), its WorkingDir unless the Pod sets workingDir, and its User unless the Pod's
securityContext sets runAsUser/runAsGroup. launch.py does the rest inside the container's mount
namespace (chroot, /proc, a minimal /dev, the Pod's volumes, a read-only root when asked, then
the user switch).

What a real runtime does and this does not: no PID, network or cgroup namespace (the process
shares the machine's network like every Pod of the node agent, and no resource limit is
enforced), no seccomp profile, no capabilities dropped beyond what a non-root uid implies.
A container whose image is not in the storage runs from the project's environment as before
(nodeagent.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import podspec


@dataclass(frozen=True)
class Image:
    reference: str
    config: dict  # the OCI image config: User, Env, Entrypoint, Cmd, WorkingDir

    def env(self) -> dict[str, str]:
        return dict(e.split("=", 1) for e in self.config.get("Env") or [] if "=" in e)

    def argv(self, container: dict, env: dict[str, str]) -> list[str]:
        """Kubernetes' rules: command replaces Entrypoint (and drops Cmd), args replace Cmd."""
        command, args = container.get("command"), container.get("args")
        if command:
            argv = [podspec.expand(a, env) for a in command + (args or [])]
        else:
            argv = [*(self.config.get("Entrypoint") or []),
                    *([podspec.expand(a, env) for a in args] if args is not None
                      else self.config.get("Cmd") or [])]
        if not argv:
            raise podspec.Unsupported(f'container "{container["name"]}": no command given and '
                                      f"image {self.reference} has no entrypoint or cmd")
        return argv

    def workdir(self, container: dict) -> str:
        return container.get("workingDir") or self.config.get("WorkingDir") or "/"

    def user(self, ctx: dict, rootfs: Path) -> tuple[int, int]:
        """runAsUser/runAsGroup of the security context (security_context), else the image's
        USER: numeric, or a name in the image's /etc/passwd and /etc/group."""
        name, _, group = (self.config.get("User") or "0").partition(":")
        uid = ctx.get("runAsUser")
        if uid is None:
            uid = int(name) if name.isdigit() else _entry(rootfs / "etc" / "passwd", 0, name)[2]
        gid = ctx.get("runAsGroup")
        if gid is None and group:
            gid = int(group) if group.isdigit() else _entry(rootfs / "etc" / "group", 0, group)[2]
        if gid is None:  # the user's primary group, as runtimes take it
            entry = _entry(rootfs / "etc" / "passwd", 2, str(uid), missing=None)
            gid = entry[3] if entry else uid
        return int(uid), int(gid)


def security_context(pod: dict, container: dict) -> dict:
    """The container's securityContext over the Pod's (the fields both have)."""
    return {**(pod["spec"].get("securityContext") or {}),
            **(container.get("securityContext") or {})}


_NOT_FOUND = object()


def _entry(path: Path, field: int, value: str, missing=_NOT_FOUND) -> list[str] | None:
    """The first line of an /etc/passwd-like file whose `field` is `value`, split on ':'."""
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split(":")
        if len(parts) > 3 and parts[field] == value:
            return parts
    if missing is _NOT_FOUND:
        raise podspec.Unsupported(f"unable to find {value}: no matching entries in {path.name}")
    return missing


def available() -> bool:
    return shutil.which("buildah") is not None


def find(reference: str | None) -> Image | None:
    """The image if buildah's storage has it (a tag as given, or under localhost/)."""
    if not reference or not available():
        return None
    proc = subprocess.run(["buildah", "inspect", "--type", "image", reference],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return Image(reference, json.loads(proc.stdout)["OCIv1"].get("config") or {})


def create_rootfs(image: Image, name: str) -> Path:
    """A working container of the image under `name`; returns its mounted root filesystem."""
    remove_rootfs(name)  # a leftover of an agent that died mid-container
    subprocess.run(["buildah", "from", "--pull-never", "--name", name, image.reference],
                   check=True, capture_output=True, text=True)
    mount = subprocess.run(["buildah", "mount", name], check=True, capture_output=True,
                           text=True)
    return Path(mount.stdout.strip())


def remove_rootfs(name: str) -> None:
    subprocess.run(["buildah", "rm", name], capture_output=True)
