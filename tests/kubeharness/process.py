"""Child processes that cannot outlive the harness.

Each service runs in its own process group (so stopping it stops whatever it spawned), records its
pid in ``<state>/pids/<name>.pid`` (so ``kubeharness down`` can stop a cluster that another process
started), and, on Linux, gets SIGKILL from the kernel when the thread that started it dies: a
pytest killed with SIGKILL leaves no etcd or apiserver behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1
try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux/glibc: no parent-death signal, pid files still work
    _libc = None


def die_with_parent() -> None:
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(check: Callable[[], bool], timeout: float, what: str, proc: Service | None = None,
             interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} while waiting for {what};"
                f" last log lines:\n{proc.log_tail()}"
            )
        with contextlib.suppress(Exception):
            if check():
                return
        time.sleep(interval)
    tail = f"; last log lines of {proc.name}:\n{proc.log_tail()}" if proc else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


class Service:
    """One long-running child process with a log file and a pid file."""

    def __init__(self, name: str, argv: list[str], state: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, tie_to_parent: bool = True):
        self.name = name
        self.argv = argv
        self.log = state / "logs" / f"{name}.log"
        self.pidfile = state / "pids" / f"{name}.pid"
        self.env = env
        self.cwd = cwd
        self.tie_to_parent = tie_to_parent
        self.popen: subprocess.Popen | None = None

    def start(self) -> Service:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=self.env, cwd=self.cwd, start_new_session=True,
                preexec_fn=die_with_parent if self.tie_to_parent else None,
            )
        self.pidfile.write_text(str(self.popen.pid))
        return self

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, grace: float = 10.0) -> None:
        if self.popen is not None:
            stop_group(self.popen.pid, grace, waiter=self.popen)
            self.popen = None
        self.pidfile.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(pid: int, grace: float, waiter: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group led by pid, SIGKILL it after grace seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if waiter is not None:
                if waiter.poll() is not None:
                    return
            elif not _alive(pid):
                return
            time.sleep(0.05)


def stop_pidfiles(state: Path, grace: float = 10.0) -> list[str]:
    """Stop every service recorded under state/pids (for `kubeharness down`)."""
    stopped = []
    pids = state / "pids"
    if not pids.is_dir():
        return stopped
    for pidfile in sorted(pids.glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().strip())
            if _alive(pid):
                stop_group(pid, grace)
                stopped.append(pidfile.stem)
        pidfile.unlink(missing_ok=True)
    return stopped
