"""One reconcile per run at a time; the events of a burst fold into one more pass."""

import threading
import time

from cream_operator.coalesce import Coalescer


def test_events_during_a_pass_fold_into_one_more():
    c = Coalescer()
    assert c.enter("a")
    assert not c.enter("a") and not c.enter("a")  # two events meanwhile
    assert c.enter("b")  # another run is independent
    assert c.done("a")  # one more pass for both events
    assert not c.done("a")  # nothing came during it: released
    assert c.enter("a")


def test_a_failed_pass_releases_the_key():
    c = Coalescer()
    c.enter("a")
    c.enter("a")
    c.abandon("a")
    assert not c.busy("a") and c.enter("a") and not c.done("a")


def test_threads_never_reconcile_one_key_at_once_and_no_event_is_lost():
    c = Coalescer()
    active, overlaps, passes, events = [0], [0], [0], 200
    lock = threading.Lock()
    seen_after_last_pass = threading.Event()
    start = threading.Barrier(events)

    def reconcile():
        start.wait()  # a burst: every event at once
        if not c.enter("run"):
            return
        while True:
            with lock:
                active[0] += 1
                overlaps[0] += active[0] > 1
            seen_after_last_pass.clear()
            time.sleep(0.005)
            with lock:
                active[0] -= 1
                passes[0] += 1
            if not c.done("run"):
                seen_after_last_pass.set()
                return

    threads = [threading.Thread(target=reconcile) for _ in range(events)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps[0] == 0
    assert 1 <= passes[0] < events  # folded, yet at least one pass after the last event
    assert seen_after_last_pass.is_set() and not c.busy("run")
