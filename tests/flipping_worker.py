"""`mle-stream` whose pause controller flips every predictions partition between paused and fetching
at every round (after every batch and every second), for the test that pausing loses and repeats
nothing: run as `python tests/flipping_worker.py <mle-stream arguments>`.

Batches are made small (BATCH_MESSAGES), so that rounds, and flips, are many. Everything else is
the worker's own: the decisions on idle labels, the pausing through aiokafka on Faust's consumer
thread, the offsets' bookkeeping that logs records "never delivered".
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mle_stream.cli import main  # noqa: E402
from mle_stream.stream import alignment, app  # noqa: E402

_update = alignment.Alignment.update
_rounds = [0]


def _flipping_update(self: alignment.Alignment, offsets: Any, homes: Any, clocks: Any) -> alignment.Plan:
    plan = _update(self, offsets, homes, clocks)
    _rounds[0] += 1
    flipped = frozenset(tp for tp in offsets if tp[0] == self.predictions_topic) if _rounds[0] % 2 else frozenset()
    self._paused = set(flipped)
    return dataclasses.replace(plan, paused=flipped)


_pause = app._pause


async def _checked_pause(faust_app: Any, pause: Any, resume: Any) -> None:
    """The worker's own _pause, then a look at aiokafka's paused set: a pause that silently did
    nothing would make this test pass for nothing."""
    await _pause(faust_app, pause, resume)
    thread = faust_app.consumer._thread
    paused = await thread.call_thread(lambda: {(tp.topic, tp.partition) for tp in thread._ensure_consumer().paused()})
    if not set(pause) <= paused or paused & set(resume):  # no rebalance in that test: all are assigned
        app.log.error("pause check failed: aiokafka has %s paused, the worker asked for %s", sorted(paused),
                      sorted(pause))


alignment.Alignment.update = _flipping_update  # type: ignore[method-assign]
app._pause = _checked_pause
app.BATCH_MESSAGES = 10

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
