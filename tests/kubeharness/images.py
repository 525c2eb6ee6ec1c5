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

    def user(self, pod: dict, container: dict, rootfs: Path) -> tuple[int, int]:
        """The Pod's runAsUser/runAsGroup (container over Pod), else the image's USER."""
        pod_ctx = pod["spec"].get("securityContext") or {}
        ctx = container.get("securityContext") or {}
        name, _, group = (self.config.get("User") or "0").partition(":")
        uid = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
        uid = uid if uid is not None else _lookup(rootfs / "etc" / "passwd", name, 2)
        gid = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
        if gid is None:
            gid = (_lookup(rootfs / "etc" / "group", group, 2) if group else
                   _passwd_gid(rootfs, uid))
        return int(uid), int(gid)


def _lookup(path: Path, name: str, field: int) -> int:
    """A numeric id as is; a name through the image's /etc/passwd or /etc/group."""
    if name.isdigit():
        return int(name)
    for line in path.read_text().splitlines() if path.exists() else []:
        parts = line.split(":")
        if parts[0] == name:
            return int(parts[field])
    raise podspec.Unsupported(f"unable to find user {name}: no matching entries in {path.name}")


def _passwd_gid(rootfs: Path, uid: int) -> int:
    passwd = rootfs / "etc" / "passwd"
    for line in passwd.read_text().splitlines() if passwd.exists() else []:
        parts = line.split(":")
        if len(parts) > 3 and parts[2] == str(uid):
            return int(parts[3])
    return uid if uid else 0


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
