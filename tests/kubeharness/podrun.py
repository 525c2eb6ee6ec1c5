"""One Pod on the local node: its containers' processes, restarts, status and deletion.

The node agent (nodeagent.py) creates a PodRun per Pod bound to its node; see its docstring for the
model. Each container starts through launch.py in private mount and UTS namespaces, with the
Pod's hostname and its /etc/hosts (podnet.py).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

import urllib3
from kubernetes.client.exceptions import ApiException

from . import images, podnet, podspec
from .process import die_with_parent

if TYPE_CHECKING:
    from .nodeagent import NodeAgent

log = logging.getLogger("kubeharness.nodeagent")

MAX_GRACE = 5.0  # seconds between SIGTERM and SIGKILL, whatever the Pod asks for
STATUS_RETRY_SECONDS = 300.0  # how long a status write waits for an API server that is away
BACKOFF_START, BACKOFF_MAX = 1.0, 10.0  # container restarts (the kubelet's are 10s..5min)
MESSAGE_LIMIT = 4096  # bytes of a termination message, as the kubelet
FALLBACK_LINES = 80
LAUNCHER = str(Path(__file__).with_name("launch.py"))
# What a container's process runs from, kept visible under its volumes (see launch.py).
KEEP = sorted({sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[2])})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw(resp) -> dict:
    return json.loads(resp.data)


def delete_now(uid: str) -> dict:
    # with a body, the API server reads DeleteOptions only from it, not from query parameters
    return {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}}

class ContainerRun:
    """One container of one Pod: its process, restarts, and reported status."""

    def __init__(self, pod_run: PodRun, spec: dict, init: bool):
        self.pod_run = pod_run
        self.spec = spec
        self.name = spec["name"]
        self.init = init
        self.restart_count = 0
        self.state: dict = {"waiting": {"reason": "ContainerCreating" if not init
                                        else "PodInitializing"}}
        self.last_state: dict = {}
        self.proc: subprocess.Popen | None = None
        self.log_path = pod_run.dir / f"{self.name}.log"
        self.message_path = pod_run.dir / "termination" / self.name
        self.exit_code: int | None = None
        # Run from the image when this machine has it (images.py), else from the environment.
        self.image = images.find(spec.get("image"))

    def status(self) -> dict:
        return {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "containerID": f"kubeharness://{self.proc.pid}" if self.proc else "",
            "ready": "running" in self.state and not self.init,
            "started": "running" in self.state,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }

    def terminate(self, reason: str, code: int, message: str, started: str) -> None:
        self.exit_code = code
        self.state = {"terminated": {
            "exitCode": code, "reason": reason, "message": message,
            "startedAt": started, "finishedAt": now(), "containerID": self.status()["containerID"],
        }}
        if not message:
            del self.state["terminated"]["message"]

    def _termination_message(self, code: int) -> str:
        try:
            text = self.message_path.read_bytes()[:MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            text = ""
        policy = self.spec.get("terminationMessagePolicy", "File")
        if not text and code != 0 and policy == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = self.log_path.read_bytes().decode(errors="replace").splitlines()
                text = "\n".join(lines[-FALLBACK_LINES:])[-MESSAGE_LIMIT:]
        return text

    @property
    def rootfs_name(self) -> str:
        return f"kubeharness-{self.pod_run.uid}-{self.name}"

    def _from_image(self, env: dict[str, str]) -> tuple[list[str], str, dict]:
        """Command line, working directory and launcher settings of a start from the image, its
        root filesystem made (and removed again if the start is refused)."""
        image, pod = self.image, self.pod_run.pod
        argv = image.argv(self.spec, env)
        rootfs = images.create_rootfs(image, self.rootfs_name)
        try:
            ctx = images.security_context(pod, self.spec)
            uid, gid = image.user(ctx, rootfs)
            if uid == 0 and ctx.get("runAsNonRoot"):  # the kubelet's check, and its words
                raise podspec.NotReady("container has runAsNonRoot and image will run as root")
        except BaseException:
            images.remove_rootfs(self.rootfs_name)
            raise
        from_image = {"rootfs": str(rootfs), "user": [uid, gid],
                      "read_only_root": bool(ctx.get("readOnlyRootFilesystem"))}
        # what ran, beside the container's log: <container>.image.json
        self.log_path.with_suffix(".image.json").write_text(json.dumps(
            {"image": image.reference, **from_image}))
        return argv, image.workdir(self.spec), from_image

    def run_once(self, env: dict[str, str], mounts: list[podspec.Mount]) -> int:
        """Start the process, wait for it, record its termination; return the exit code."""
        pr = self.pod_run
        image = self.image
        try:
            if image:
                argv, workdir, from_image = self._from_image(env)
            else:
                argv, workdir = podspec.command_line(self.spec, env), self.spec.get("workingDir")
                from_image = {}
        except (podspec.Unsupported, subprocess.CalledProcessError) as e:
            msg = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
            self.terminate("StartError", 128, msg, now())
            return 128
        host_workdir = pr.dir / "work" / self.name
        if not workdir:
            host_workdir.mkdir(parents=True, exist_ok=True)
        # A bare command name must be found on the container's PATH; say so like a runtime does.
        if not image and "/" not in argv[0] and shutil.which(argv[0], path=env.get("PATH")) is None:
            msg = (f'failed to start container "{self.name}": exec: "{argv[0]}": executable file '
                   "not found in $PATH")
            self.terminate("StartError", 128, msg, now())
            with open(self.log_path, "a") as f:
                f.write(msg + "\n")
            return 128
        self.message_path.parent.mkdir(parents=True, exist_ok=True)
        self.message_path.write_bytes(b"")
        self.message_path.chmod(0o666)  # the container's user may not be root
        msg_target = self.spec.get("terminationMessagePath") or "/dev/termination-log"
        all_mounts = [podspec.Mount(pr.hosts_path, "/etc/hosts", False, True), *mounts,
                      podspec.Mount(self.message_path, msg_target, False, True)]
        spec = json.dumps({"mounts": [[str(m.source), m.target, m.read_only, m.is_file]
                                      for m in all_mounts],
                           "workdir": workdir or str(host_workdir),
                           "host_workdir": not workdir, "keep": KEEP,
                           "hostname": podnet.hostname(pr.pod), "argv": argv, **from_image})
        started = now()
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--uts", "--propagation", "private",
                 sys.executable, "-I", "-S", LAUNCHER, spec],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=pr.dir, start_new_session=True, preexec_fn=die_with_parent,
            )
        if pr.deleting.is_set():  # deleted while we were starting it: the kill missed it
            self.kill(pr.grace)
        self.state = {"running": {"startedAt": started}}
        pr.push_status()
        rc = self.proc.wait()
        # the container ends with its main process: take its stray children with it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if image:
            images.remove_rootfs(self.rootfs_name)
        code = rc if rc >= 0 else 128 - rc
        reason = "Completed" if code == 0 else "Error"
        self.terminate(reason, code, self._termination_message(code), started)
        return code

    def kill(self, grace: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)


class PodRun(threading.Thread):
    """Runs one Pod from its volumes to its terminal phase, and its deletion."""

    def __init__(self, agent: NodeAgent, pod: dict):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.ns, self.pod_name, self.uid = meta["namespace"], meta["name"], meta["uid"]
        self.dir = agent.state / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.dir.mkdir(parents=True, exist_ok=True)
        # The Pod's address, from the node's block; fieldRefs (status.podIP) read it from here.
        self.pod_ip, self.host_ip = agent.addresses.next(), agent.addresses.node_ip
        pod.setdefault("status", {}).update(podIP=self.pod_ip, hostIP=self.host_ip)
        self.hosts_path = self.dir / "etc-hosts"
        self._hosts_lock = threading.Lock()
        self._hosts_text = ""
        spec = pod["spec"]
        self.restart_policy = spec.get("restartPolicy", "Always")
        self.inits = [ContainerRun(self, c, True) for c in spec.get("initContainers") or []]
        self.mains = [ContainerRun(self, c, False) for c in spec.get("containers") or []]
        self.deleting = threading.Event()
        self.grace = MAX_GRACE
        self.start_time = now()
        self.phase = "Pending"
        self.reason = self.message = None
        self.initialized = not self.inits
        self.volumes_ready = False
        self.done = threading.Event()
        self._lock = threading.Lock()

    # --- status -------------------------------------------------------------------------------
    def _conditions(self) -> list[dict]:
        ts = now()
        running = all("running" in c.state for c in self.mains)
        ready = running and self.phase == "Running"
        completed = self.phase in ("Succeeded", "Failed")

        def cond(type_: str, ok: bool, reason: str | None = None) -> dict:
            c = {"type": type_, "status": "True" if ok else "False", "lastProbeTime": None,
                 "lastTransitionTime": ts}
            if reason and not ok:
                c["reason"] = reason
            return c

        return [
            cond("PodReadyToStartContainers", self.volumes_ready and not completed),
            cond("Initialized", self.initialized,
                 "ContainersNotInitialized" if not completed else "PodCompleted"),
            cond("Ready", ready, "PodCompleted" if completed else "ContainersNotReady"),
            cond("ContainersReady", ready, "PodCompleted" if completed else "ContainersNotReady"),
        ]

    def push_status(self) -> None:
        """Write our view of the Pod's status, keeping conditions that others own. While the API
        server is away (restarting), keep trying, as the kubelet's status manager does: a lost
        write of a terminal phase would leave the Pod Running forever."""
        deadline = time.monotonic() + STATUS_RETRY_SECONDS
        while True:
            try:
                return self._push_status()
            except (urllib3.exceptions.HTTPError, OSError) as e:
                error = e
            except ApiException as e:
                if e.status < 500:
                    raise
                error = e
            if time.monotonic() > deadline or self.agent.stopping.is_set():
                raise error
            log.warning("status of %s/%s not written (%s); trying again", self.ns,
                        self.pod_name, error)
            time.sleep(1)

    def _push_status(self) -> None:
        with self._lock:
            for _ in range(10):
                try:
                    current = raw(self.agent.core.read_namespaced_pod_status(
                        self.pod_name, self.ns, _preload_content=False))
                except ApiException as e:
                    if e.status == 404:
                        return
                    raise
                if current["metadata"]["uid"] != self.uid:
                    return
                status = current.setdefault("status", {})
                ours = self._conditions()
                ours_types = {c["type"] for c in ours}
                old = {c["type"]: c for c in status.get("conditions") or []}
                for c in ours:  # keep the transition time when the status did not change
                    prev = old.get(c["type"])
                    if prev and prev.get("status") == c["status"]:
                        c["lastTransitionTime"] = prev.get("lastTransitionTime")
                status["conditions"] = [c for t, c in old.items() if t not in ours_types] + ours
                status.update({
                    "phase": self.phase,
                    "hostIP": self.host_ip, "hostIPs": [{"ip": self.host_ip}],
                    "podIP": self.pod_ip, "podIPs": [{"ip": self.pod_ip}],
                    "startTime": self.start_time,
                    "containerStatuses": [c.status() for c in self.mains],
                    "qosClass": status.get("qosClass", "BestEffort"),
                })
                if self.inits:
                    status["initContainerStatuses"] = [c.status() for c in self.inits]
                for k, v in (("reason", self.reason), ("message", self.message)):
                    if v:
                        status[k] = v
                try:
                    self.agent.core.replace_namespaced_pod_status(
                        self.pod_name, self.ns, current, _preload_content=False)
                    return
                except ApiException as e:
                    if e.status == 404:
                        return
                    if e.status != 409:
                        raise
            log.warning("gave up writing the status of %s/%s", self.ns, self.pod_name)

    def write_hosts(self, view: tuple[list[dict], list[dict]] | None = None) -> None:
        """(Re)write the Pod's /etc/hosts from its namespace's Services and Pods."""
        services, pods = view if view is not None else self.agent.dns_view(self.ns)
        text = podnet.hosts_file(self.pod, self.pod_ip, services, pods)
        with self._hosts_lock:
            if text != self._hosts_text:
                podnet.rewrite_in_place(self.hosts_path, text)
                self._hosts_text = text

    # --- lifecycle ----------------------------------------------------------------------------
    def request_delete(self, grace: float | None) -> None:
        if grace is not None:
            self.grace = min(float(grace), MAX_GRACE)
        self.deleting.set()
        for c in self.inits + self.mains:
            threading.Thread(target=c.kill, args=(self.grace,), daemon=True).start()

    def run(self) -> None:
        try:
            self._run()
        except Exception as e:  # an agent bug must fail this Pod, not the agent
            log.error("pod %s/%s: %s", self.ns, self.pod_name, traceback.format_exc())
            self.phase, self.reason, self.message = "Failed", "NodeAgentError", str(e)
            with contextlib.suppress(Exception):
                self.push_status()
        self.done.set()
        self.deleting.wait()
        self._finish_deletion()

    def _fail(self, reason: str, message: str) -> None:
        self.phase, self.reason, self.message = "Failed", reason, message
        self.push_status()

    def _run(self) -> None:
        self.write_hosts()
        self.push_status()
        volumes = self._prepare_volumes()
        if volumes is None:
            return
        self.volumes_ready = True
        if deadline := self.pod["spec"].get("activeDeadlineSeconds"):
            timer = threading.Timer(float(deadline), self._deadline_exceeded)
            timer.daemon = True
            timer.start()
        for c in self.inits:
            code = self._supervise(c, volumes)
            if self.deleting.is_set() or self.phase == "Failed":
                return
            if code != 0:
                self._fail("InitContainerFailed",
                           f'init container "{c.name}" exited with {code}')
                return
        self.initialized = True
        if self.phase == "Pending":
            self.phase = "Running"
        threads = [threading.Thread(target=self._supervise, args=(c, volumes), daemon=True)
                   for c in self.mains]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.deleting.is_set() or self.phase == "Failed":
            return
        self.phase = "Succeeded" if all(c.exit_code == 0 for c in self.mains) else "Failed"
        self.push_status()

    def _deadline_exceeded(self) -> None:
        if self.done.is_set():
            return
        self.phase, self.reason = "Failed", "DeadlineExceeded"
        self.message = "Pod was active on the node longer than the specified deadline"
        for c in self.inits + self.mains:
            c.kill(self.grace)

    def _prepare_volumes(self) -> dict[str, Path] | None:
        """Materialise every volume; wait (Pending) while a referenced object is missing."""
        while not self.deleting.is_set():
            try:
                paths = {}
                for vol in self.pod["spec"].get("volumes") or []:
                    paths[vol["name"]] = podspec.materialize_volume(
                        self.pod, vol, self.dir / "volumes" / vol["name"], self.agent.reader,
                        self.agent.allocatable)
                return paths
            except podspec.Unsupported as e:
                self._fail("UnsupportedPodSpec", str(e))
                return None
            except podspec.NotReady as e:
                self.message = f"waiting for volumes: {e}"
                self.push_status()
                self.deleting.wait(1.0)
        return None

    def _supervise(self, c: ContainerRun, volumes: dict[str, Path]) -> int:
        """Run a container, restarting it as the Pod's restartPolicy says; return the last code."""
        backoff = BACKOFF_START
        while True:
            try:
                env = podspec.container_env(self.pod, c.spec, self.agent.reader,
                                            self.agent.base_env(self.pod, c.image),
                                            self.agent.allocatable)
                mounts = podspec.mounts_for(c.spec, volumes)
                code = c.run_once(env, mounts)
            except podspec.NotReady as e:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self.push_status()
                if self.deleting.wait(1.0):
                    return 137
                continue
            except podspec.Unsupported as e:
                c.terminate("StartError", 128, str(e), now())
                code = 128
            if self.deleting.is_set() or self.phase == "Failed":
                self.push_status()
                return code
            policy = self.restart_policy
            restart = policy == "Always" or (policy == "OnFailure" and code != 0)
            if c.init and policy == "Always":
                restart = code != 0  # init containers run to completion once
            if not restart:
                self.push_status()
                return code
            c.last_state = c.state
            c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": f"back-off {backoff:.0f}s restarting failed "
                                              f"container={c.name} pod={self.pod_name}"}}
            c.restart_count += 1
            self.push_status()
            if self.deleting.wait(backoff):
                return code
            backoff = min(backoff * 2, BACKOFF_MAX)

    def _finish_deletion(self) -> None:
        """The Pod is being deleted: stop everything, record the terminal phase, remove it."""
        for c in self.inits + self.mains:
            c.kill(self.grace)
        self.done.wait(self.grace + 10)
        if self.phase not in ("Succeeded", "Failed"):
            ok = all(c.exit_code == 0 for c in self.mains) and all(
                c.exit_code is not None for c in self.mains)
            self.phase = "Succeeded" if ok else "Failed"
            for c in self.inits + self.mains:
                if "terminated" not in c.state:
                    c.terminate("ContainerStatusUnknown", 137,
                                "The container was stopped because the Pod was deleted", now())
        with contextlib.suppress(Exception):
            self.push_status()
        try:
            self.agent.core.delete_namespaced_pod(
                self.pod_name, self.ns, body=delete_now(self.uid), _preload_content=False)
        except ApiException as e:
            if e.status not in (404, 409):
                log.warning("deleting %s/%s: %s", self.ns, self.pod_name, e)

    def pids(self) -> list[int]:
        return [c.proc.pid for c in self.inits + self.mains if c.proc is not None]
