"""Container start-up, run by the node agent inside a fresh mount namespace:

    unshare --mount --uts --propagation private python -I -S launch.py '<json>'

with ``{"mounts": [[source, target, read_only, is_file], ...], "workdir": ...,
"host_workdir": bool, "keep": [path, ...], "hostname": ..., "argv": [...]}``.
It sets the (namespaced) hostname, bind-mounts every source at its target, changes to the working
directory and execs argv (so the container's process keeps this pid). Standard library only, no
site: it runs once per start.

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

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC = 1, 32, 4096, 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, target.encode(), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec.get("hostname"):  # a UTS namespace of its own: the Pod's name, not the machine's
        socket.sethostname(spec["hostname"])
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
    if host_wd is not None:
        os.fchdir(host_wd)
        os.close(host_wd)
    else:  # workingDir from the Pod spec: inside the container's view, created if missing
        os.makedirs(spec["workdir"], exist_ok=True)
        os.chdir(spec["workdir"])
    argv = spec["argv"]
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        sys.stderr.write(f'exec "{argv[0]}": {e.strerror}\n')
        sys.exit(127 if isinstance(e, FileNotFoundError) else 126)


if __name__ == "__main__":
    try:
        main()
    except OSError as e:
        sys.stderr.write(f"kubeharness: container start failed: {e}\n")
        sys.exit(128)
