"""A slow safety net: every so often, reconcile each run that no event reconciled for that long
(a reconcile that failed on an API error is tried again). It reads what the watches delivered, so
an idle run costs no API call.

Our own thread rather than a kopf timer: kopf puts a finalizer on every object that has a timer,
so with the operator down `kubectl delete` of any run would hang. With peering (several
replicas) kopf's timer is used after all (handlers.register_peering_resync): only kopf knows when
this replica is paused, and a paused replica must not act.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

RunKey = tuple[str, str]


def due(runs: Iterable[RunKey], last_pass: Mapping[RunKey, float], now: float,
        idle: float) -> list[RunKey]:
    """The runs whose last reconcile began at least `idle` seconds ago, or never."""
    return [key for key in runs if now - last_pass.get(key, float("-inf")) >= idle]


class Resync:
    def __init__(self, runs: Callable[[], list[RunKey]], last_pass: Callable[[], dict],
                 reconcile: Callable[[str, str], object], interval: float):
        self._runs, self._last_pass, self._reconcile = runs, last_pass, reconcile
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="resync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.once()

    def once(self) -> None:
        for namespace, name in due(self._runs(), self._last_pass(), time.monotonic(),
                                   self.interval):
            if self._stop.is_set():
                return
            try:
                self._reconcile(namespace, name)
            except Exception as exc:  # noqa: BLE001 - one run's failure must not stop the others
                log.warning("resync of %s/%s failed: %s", namespace, name, exc)
