"""One reconcile of a run at a time, and bursts of events folded into one more pass.

A stage's Job changes several times in a second (created, Pod active, ready, complete) and each
change is an event; so does the run's own status write. Instead of queueing one reconcile per event
behind a lock (each holding a worker thread), an event that finds its run's reconcile in progress
only marks the run for one more pass, which the thread already reconciling it makes when it is
done: a burst of N events costs at most two reconciles, and no thread waits on another.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable


class Coalescer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: set[Hashable] = set()
        self._again: set[Hashable] = set()

    def enter(self, key: Hashable) -> bool:
        """True: the caller reconciles key now. False: a reconcile is in progress, which will
        make one more pass."""
        with self._lock:
            if key in self._busy:
                self._again.add(key)
                return False
            self._busy.add(key)
            return True

    def done(self, key: Hashable) -> bool:
        """After a pass: True if events came meanwhile (reconcile once more), else release key."""
        with self._lock:
            if key in self._again:
                self._again.discard(key)
                return True
            self._busy.discard(key)
            return False

    def abandon(self, key: Hashable) -> None:
        """A pass failed: release key; the next event (or the resync timer) starts over."""
        with self._lock:
            self._busy.discard(key)
            self._again.discard(key)

    def busy(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._busy
