"""Spec of the per-run queue between kopf's events and reconciles: one reconcile at a time per
run, bursts folded, our own status write ignored, failures retried later and later."""

import asyncio

from selfreward.operator.handlers import MAX_ERROR_DELAY, RunQueue
from selfreward.operator.reconciler import Outcome

KEY = ("ns", "run")


class Recorder(RunQueue):
    """A queue whose timers fire at once and are remembered."""

    def __init__(self, reconcile):
        super().__init__(reconcile)
        self.delays: list[float] = []

    def _wake_in(self, key, seconds):
        self.delays.append(seconds)
        if len(self.delays) < 8:
            asyncio.get_running_loop().call_soon(self.poke, key)


async def settle(queue: RunQueue, deadline: float = 5.0, until=lambda: True) -> None:
    """Wait until the queue has no worker left (reconciles run in threads) and `until()` holds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    await asyncio.sleep(0)
    while queue.workers or not until():
        assert loop.time() < end, "the queue did not settle"
        await asyncio.sleep(0.005)


def test_events_that_arrive_during_a_reconcile_cause_one_more_reconcile_not_one_each():
    calls = []

    async def scenario():
        queue = RunQueue(lambda *key: calls.append(key) or Outcome())
        for _ in range(5):
            queue.poke(KEY)
        await settle(queue)

    asyncio.run(scenario())
    assert calls == [KEY]


def test_the_event_of_our_own_status_write_is_not_reconciled_again():
    calls = []

    async def scenario():
        queue = RunQueue(lambda *key: calls.append(key) or Outcome(status_written="42"))
        queue.poke(KEY, "41")
        await settle(queue)
        queue.poke(KEY, "42")  # the watch event of the write
        await settle(queue)
        queue.poke(KEY, "43")  # someone else's change
        await settle(queue)

    asyncio.run(scenario())
    assert len(calls) == 2


def test_a_failing_reconcile_is_tried_again_later_and_later():
    def broken(*key):
        raise RuntimeError("the API server is unreachable")

    async def scenario():
        queue = Recorder(broken)
        queue.poke(KEY)
        # A retry's poke is scheduled after its worker ends: no worker at that moment is not the end.
        await settle(queue, until=lambda: len(queue.delays) == 8)
        return queue.delays

    delays = asyncio.run(scenario())
    assert delays[:5] == [2.0, 4.0, 8.0, 16.0, 32.0] and delays[-1] == MAX_ERROR_DELAY


def test_a_success_resets_the_failure_backoff():
    results = [RuntimeError("down"), RuntimeError("down"), Outcome(), RuntimeError("down")]
    calls = []

    def flaky(*key):
        calls.append(key)
        result = results[len(calls) - 1] if len(calls) <= len(results) else Outcome()
        if isinstance(result, Exception):
            raise result
        return result

    async def scenario():
        queue = Recorder(flaky)
        queue.poke(KEY)
        await settle(queue, until=lambda: len(calls) == 3)  # two failures, then the success
        queue.poke(KEY)
        await settle(queue, until=lambda: len(queue.delays) == 3)
        return queue.delays

    assert asyncio.run(scenario())[:3] == [2.0, 4.0, 2.0]


def test_a_retry_backoff_wakes_the_run_when_it_is_due():
    async def scenario():
        queue = Recorder(lambda *key: Outcome(wake_in=30.0))
        queue.poke(KEY)
        await settle(queue)
        return queue.delays

    assert asyncio.run(scenario())[0] == 30.0
