"""Container start-up, run by the node agent inside a fresh mount namespace:

    unshare --mount --uts --propagation private python -I -S launch.py '<json>'

with ``{"mounts": [[source, target, read_only, is_file], ...], "workdir": ...,
"host_workdir": bool, "keep": [path, ...], "hostname": ..., "argv": [...]}``, and for a container
run from its image (images.py) also ``"rootfs": path, "user": [uid, gid], "read_only_root": bool``.
It sets the (namespaced) hostname, bind-mounts every source at its target, changes to the working
directory and execs argv (so the container's process keeps this pid). Standard library only, no
site: it runs once per start.

With a rootfs, every target is inside it: the rootfs becomes a mount point of its own, gets /proc,
a /dev of its own (a tmpfs with the host's null, zero, full, random, urandom and tty bound in, so
nothing a container writes there reaches the host's /dev) and a read-only /sys; the volumes follow;
the root is remounted read-only when asked (the volumes under it stay as mounted); then chroot,
the working directory, and the user (supplementary groups dropped) before exec.

Every source is opened before the first mount: a mount at /tmp would otherwise hide a source
that lives under /tmp (the Pod's own state dir often does). Mounting from /proc/self/fd/N reaches
the opened directory whatever is mounted over its path by then.

The ``keep`` paths (the project's environment: its checkout and its venv) stay visible: a volume
mounted over one of their ancestors (an emptyDir at /tmp, with the checkout under /tmp) gets them
bind-mounted back, since images are not pulled and the process runs from them.
"""

import ctypes
import json
import os
import socket
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _container_root(root: str) -> None:
    """The rootfs as a mount point with /proc, a private /dev and a read-only /sys."""
    _mount(root, root, MS_BIND | MS_REC)
    os.makedirs(f"{root}/proc", exist_ok=True)
    _mount("proc", f"{root}/proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "proc")
    dev = f"{root}/dev"
    os.makedirs(dev, exist_ok=True)
    _mount("tmpfs", dev, MS_NOSUID, "tmpfs")
    for name in DEVICES:
        open(f"{dev}/{name}", "a").close()
        _mount(f"/dev/{name}", f"{dev}/{name}", MS_BIND)
    os.makedirs(f"{dev}/shm")
    _mount("shm", f"{dev}/shm", MS_NOSUID | MS_NODEV, "tmpfs")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{dev}/{name}")
    os.makedirs(f"{root}/sys", exist_ok=True)
    _mount("/sys", f"{root}/sys", MS_BIND | MS_REC)
    _mount(None, f"{root}/sys", MS_BIND | MS_REMOUNT | MS_RDONLY)


def _in_root(root: str, path: str) -> str:
    """path inside the image's root as the container will see it: symbolic links followed
    within root (Debian's /var/run -> /run must not lead to the host's /run), as runtimes
    resolve mount targets."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        here = root + "/" + "/".join([*resolved, part])
        if os.path.islink(here):
            hops += 1
            if hops > 40:
                raise OSError(40, "too many levels of symbolic links", path)
            link = os.readlink(here)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p not in ("", ".")] + parts
            continue
        resolved.append(part)
    return root + "/" + "/".join(resolved)


def _on_path(name: str) -> str:
    """name looked up on PATH as execvp does, without os.execvp: it imports modules lazily, and
    after a chroot into an image the host's standard library is out of reach."""
    if "/" in name:
        return name
    for directory in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        candidate = f"{directory or '.'}/{name}"
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(2, "executable file not found in $PATH", name)


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("hostname"):  # a UTS namespace of its own: the Pod's name, not the machine's
        socket.sethostname(spec["hostname"])
    root = spec.get("rootfs")
    if root:
        _container_root(root)
        spec["mounts"] = [[src, _in_root(root, target), ro, is_file]
                          for src, target, ro, is_file in spec["mounts"]]
        spec["keep"] = []  # the image has all it runs
    # parents before children, as container runtimes order them
    mounts = sorted(spec["mounts"], key=lambda m: os.path.normpath(m[1]).count("/"))
    fds = [os.open(src, os.O_PATH | os.O_CLOEXEC) for src, *_ in mounts]
    keep = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in spec.get("keep", [])
            if os.path.isdir(path)]
    # the agent's default working directory is on the host side: hold it before any mount
    host_wd = os.open(spec["workdir"], os.O_RDONLY | os.O_CLOEXEC) if spec["host_workdir"] else None
    for fd, (_, target, read_only, is_file) in zip(fds, mounts, strict=True):
        if is_file:
            os.makedirs(os.path.dirname(target) or "/", exist_ok=True)
            if not os.path.exists(target):
                open(target, "a").close()
        else:
            os.makedirs(target, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", target, MS_BIND | MS_REC)
        if read_only:
            _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for fd in fds:
        os.close(fd)
    targets = [os.path.normpath(t) for _, t, _, is_file in mounts if not is_file]
    for path, fd in keep:
        if any(path.startswith(t.rstrip("/") + "/") for t in targets):
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, MS_BIND | MS_REC)
        os.close(fd)
    if root:
        os.makedirs(_in_root(root, spec["workdir"]), exist_ok=True)
        if spec.get("read_only_root"):
            _mount(None, root, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.chroot(root)
        os.chdir(spec["workdir"])
        uid, gid = spec["user"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    elif host_wd is not None:
        os.fchdir(host_wd)
        os.close(host_wd)
    else:  # workingDir from the Pod spec: inside the container's view, created if missing
        os.makedirs(spec["workdir"], exist_ok=True)
        os.chdir(spec["workdir"])
    argv = spec["argv"]
    try:
        os.execv(_on_path(argv[0]), argv)
    except OSError as e:
        sys.stderr.write(f'exec "{argv[0]}": {e.strerror}\n')
        sys.exit(127 if isinstance(e, FileNotFoundError) else 126)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.stderr.write(f"kubeharness: container start failed: {e}\n")
        sys.exit(128)
