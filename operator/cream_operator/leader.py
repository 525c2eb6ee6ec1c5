"""Leader election on a coordination.k8s.io Lease, so that a second replica can stand by.

Only the leader runs kopf (its watches and handlers, so only it creates Jobs). A standby reads the
Lease every retry period and takes it once the holder has not renewed it for the lease's duration;
the leader renews it every retry period and, when it cannot for `renew_deadline` seconds or finds
another holder, exits at once (the Pod restarts as a standby). The kubernetes client's own
leaderelection has only a ConfigMap lock, hence this small Lease lock.

As in client-go, expiry is judged by the standby's own clock: the time it last saw the record
change, plus the lease's duration. Clocks of different machines never get compared. With
renew_deadline < lease_duration, a leader that cannot renew has stopped before anyone may take
over. A killed leader is replaced within lease_duration + 2 * retry_period when the API server
answers promptly (the standby sees the last renewal at most one retry period late and looks
again at most one retry period after expiry); each call is cut off after one retry period.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from kubernetes import client

from . import actionlog

log = logging.getLogger(__name__)

# The exit status of a leader that lost its lease (so its logs say why it restarted).
LOST_EXIT_CODE = 3


@dataclass(frozen=True)
class ElectionConfig:
    lease_name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ElectionConfig | None:
        """None (no election: this replica leads alone) unless CREAM_LEASE_NAME is set."""
        env = dict(os.environ if env is None else env)
        name = env.get("CREAM_LEASE_NAME", "").strip()
        if not name:
            return None
        namespace = env.get("CREAM_LEASE_NAMESPACE") or env.get("POD_NAMESPACE") or ""
        if not namespace:
            raise ValueError("CREAM_LEASE_NAME is set but neither CREAM_LEASE_NAMESPACE nor "
                             "POD_NAMESPACE says where the Lease lives: set one (the chart "
                             "sets POD_NAMESPACE from the Pod's own namespace)")
        # The Pod's name (unique among the replicas); outside a Pod, the host and a random part.
        identity = env.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
        config = cls(
            lease_name=name, namespace=namespace, identity=identity,
            lease_duration=_seconds(env, "CREAM_LEASE_DURATION_SECONDS", cls.lease_duration),
            renew_deadline=_seconds(env, "CREAM_LEASE_RENEW_DEADLINE_SECONDS",
                                    cls.renew_deadline),
            retry_period=_seconds(env, "CREAM_LEASE_RETRY_PERIOD_SECONDS", cls.retry_period),
        )
        config.check()
        return config

    def check(self) -> None:
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs CREAM_LEASE_RETRY_PERIOD_SECONDS < "
                "CREAM_LEASE_RENEW_DEADLINE_SECONDS < CREAM_LEASE_DURATION_SECONDS (a leader must "
                "give up before a standby may take over), got "
                f"{self.retry_period} < {self.renew_deadline} < {self.lease_duration}")

    @property
    def takeover_bound(self) -> float:
        """The longest a killed leader stays unreplaced, API calls aside (see above)."""
        return self.lease_duration + 2 * self.retry_period


def _seconds(env: dict[str, str], name: str, default: float) -> float:
    value = env.get(name)
    if value is None or not value.strip():
        return default
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number <= 0:
        raise ValueError(f"{name}={value!r}: expected a number of seconds > 0 (e.g. {default:g})")
    return number


# --- the pure part: what a replica may do, given what it has seen -------------------------------

@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec, as the election reads and writes it."""

    holder: str = ""
    duration: float = 0.0
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0


@dataclass(frozen=True)
class Observation:
    record: LeaseRecord
    seen_at: float  # this replica's monotonic clock when the record last changed


def observe(previous: Observation | None, record: LeaseRecord, now: float) -> Observation:
    """The record as seen now; its clock starts again only when the record changed."""
    if previous is not None and previous.record == record:
        return previous
    return Observation(record, now)


def may_take(seen: Observation | None, me: str, now: float) -> bool:
    """Whether this replica may write itself into the Lease: nobody holds it, it holds it, or
    the holder has not renewed it for the lease's duration by this replica's clock."""
    if seen is None:
        return True
    record = seen.record
    return (not record.holder or record.holder == me
            or now >= seen.seen_at + record.duration)


def claimed(old: LeaseRecord | None, me: str, now: datetime, duration: float) -> LeaseRecord:
    """The record that makes (or keeps) this replica the holder."""
    stamp = micro_time(now)
    if old is not None and old.holder == me:
        return replace(old, duration=duration, renew_time=stamp)
    # A change of holder is a transition (from a released Lease too), as client-go counts them.
    transitions = old.transitions + 1 if old is not None else 0
    return LeaseRecord(holder=me, duration=duration, acquire_time=stamp, renew_time=stamp,
                       transitions=transitions)


def released(old: LeaseRecord) -> LeaseRecord:
    """A leader's clean goodbye: no holder, so a standby takes over at its next look."""
    return replace(old, holder="", duration=1.0)


def micro_time(when: datetime) -> str:
    """RFC 3339 with microseconds, as the API server's MicroTime wants it."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_of(spec: dict | None) -> LeaseRecord:
    spec = spec or {}
    return LeaseRecord(
        holder=spec.get("holderIdentity") or "",
        duration=float(spec.get("leaseDurationSeconds") or 0),
        acquire_time=spec.get("acquireTime") or "",
        renew_time=spec.get("renewTime") or "",
        transitions=int(spec.get("leaseTransitions") or 0),
    )


def spec_of(record: LeaseRecord) -> dict:
    spec = {"holderIdentity": record.holder or None,
            "leaseDurationSeconds": max(1, round(record.duration)),
            "leaseTransitions": record.transitions}
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return spec


# --- the Lease in the API -----------------------------------------------------------------------

class LeaseLock:
    """Reads and writes one Lease; a write names the resourceVersion it read, so of two replicas
    writing at once one gets 409 Conflict and stays what it was."""

    def __init__(self, api: client.ApiClient, config: ElectionConfig):
        self._leases = client.CoordinationV1Api(api)
        self.config = config

    def read(self, timeout: float) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion, or None when there is no Lease yet."""
        try:
            resp = self._leases.read_namespaced_lease(
                self.config.lease_name, self.config.namespace, _preload_content=False,
                _request_timeout=timeout)
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        body = json.loads(resp.data)
        return record_of(body.get("spec")), body["metadata"]["resourceVersion"]

    def write(self, record: LeaseRecord, version: str | None, timeout: float) -> bool:
        """Create (version None) or replace the Lease; False when another replica won."""
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.config.lease_name,
                             "namespace": self.config.namespace},
                "spec": spec_of(record)}
        try:
            if version is None:
                self._leases.create_namespaced_lease(self.config.namespace, body,
                                                     _request_timeout=timeout)
            else:
                body["metadata"]["resourceVersion"] = version
                self._leases.replace_namespaced_lease(
                    self.config.lease_name, self.config.namespace, body,
                    _request_timeout=timeout)
        except client.ApiException as exc:
            if exc.status in (409, 422):  # 409 Conflict; 422 AlreadyExists races on create
                return False
            raise
        return True


class Elector:
    """acquire() blocks until this replica leads; then keep_leading() renews in a thread and calls
    `lost` (by default: exit the process) the moment leadership cannot be kept."""

    def __init__(self, lock: LeaseLock, lost: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.lock = lock
        self.config = lock.config
        self._lost = lost or _exit_lost
        self._clock = clock
        self._seen: Observation | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_look = clock()  # the standby's liveness: it is still looking

    def try_once(self, deadline: float | None = None) -> bool:
        """One look at the Lease, and a write when this replica may take or renew it. No call
        runs past `deadline` (monotonic), nor longer than a retry period."""
        self.last_look = self._clock()
        current = self.lock.read(self._timeout(deadline))
        # The clock of what was read starts after the read: never before the holder wrote it.
        now = self._clock()
        record, version = current if current is not None else (None, None)
        if record is not None:
            self._seen = observe(self._seen, record, now)
        if not may_take(self._seen if record is not None else None, self.config.identity, now):
            return False
        mine = claimed(record, self.config.identity, datetime.now(UTC),
                       self.config.lease_duration)
        if not self.lock.write(mine, version, self._timeout(deadline)):
            return False
        self._seen = Observation(mine, now)
        if record is None or record.holder != self.config.identity:
            actionlog.action("leader acquired", lease=f"{self.config.namespace}/"
                             f"{self.config.lease_name}", identity=self.config.identity,
                             previous=record.holder if record is not None else None)
        return True

    def _timeout(self, deadline: float | None) -> float:
        timeout = self.config.retry_period
        if deadline is not None:
            timeout = min(timeout, deadline - self._clock())
            if timeout <= 0:
                raise TimeoutError("renew deadline reached")
        return timeout

    def acquire(self) -> None:
        """Stand by until this replica holds the Lease, looking once per retry period."""
        log.info("standing by for Lease %s/%s as %s", self.config.namespace,
                 self.config.lease_name, self.config.identity)
        while True:
            started = self._clock()
            try:
                if self.try_once():
                    return
            except Exception as exc:  # noqa: BLE001 - the API server may be away: look again
                log.warning("reading Lease %s failed: %s", self.config.lease_name, exc)
            time.sleep(max(0.0, started + self.config.retry_period - self._clock()))

    def keep_leading(self) -> None:
        self._thread = threading.Thread(target=self._renew_loop, name="lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        """Renew once per retry period. `renewed` is when the last successful attempt began:
        others count the lease's duration from after its write, so stopping by renewed +
        renew_deadline is stopping before anyone may take over."""
        renewed = self._clock()
        next_try = renewed + self.config.retry_period
        while not self._stop.wait(max(0.0, next_try - self._clock())):
            started = self._clock()
            next_try = started + self.config.retry_period
            try:
                if self.try_once(deadline=renewed + self.config.renew_deadline):
                    renewed = started
                elif self._seen is not None and self._seen.record.holder not in (
                        "", self.config.identity):
                    self._lost(f"Lease held by {self._seen.record.holder}")
                    return
            except Exception as exc:  # noqa: BLE001 - retried until the deadline
                log.warning("renewing Lease %s failed: %s", self.config.lease_name, exc)
            if self._clock() >= renewed + self.config.renew_deadline:
                self._lost(f"not renewed for {self.config.renew_deadline:g}s")
                return

    def release(self) -> None:
        """On a clean stop: stop renewing and hand the Lease over at once."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.retry_period + 5)
        try:
            current = self.lock.read(self.config.retry_period)
            if current is not None and current[0].holder == self.config.identity:
                self.lock.write(released(current[0]), current[1], self.config.retry_period)
                actionlog.action("leader released", lease=self.config.lease_name,
                                 identity=self.config.identity)
        except Exception as exc:  # noqa: BLE001 - the standby takes over on expiry anyway
            log.warning("releasing Lease %s failed: %s", self.config.lease_name, exc)


def _exit_lost(why: str) -> None:
    """Stop acting at once: no handler may run one more step without the Lease."""
    actionlog.action("leader lost", reason=why)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(LOST_EXIT_CODE)
