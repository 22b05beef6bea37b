"""`mle-stream` with faults injected, for tests that need a worker to fail for real: run as
`python tests/faulty_worker.py <mle-stream arguments>`.

A message whose value starts with one of these markers makes the worker's processing step
raise in its processing thread, as a bug or a hostile record would:

- b"RAISE:" raises RuntimeError, an ordinary exception (Faust's supervisor restarts the agent);
- b"EXIT:" raises SystemExit, which Faust does not treat as an agent error;
- b"HANG:<path>" does not raise but holds the processing step until the file <path> exists (at
  most two minutes), as a batch stuck in a call that never returns.

Nothing of the health logic is replaced: only the processor fails.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mle_stream.cli import main  # noqa: E402
from mle_stream.stream import processor  # noqa: E402

_process = processor.StreamProcessor.process


def _faulty_process(self: processor.StreamProcessor, messages: Sequence[Any]) -> Any:
    for m in messages:
        if m.value.startswith(b"RAISE:"):
            raise RuntimeError(f"injected failure at {m.topic}[{m.partition}]@{m.offset}")
        if m.value.startswith(b"EXIT:"):
            raise SystemExit(f"injected exit at {m.topic}[{m.partition}]@{m.offset}")
        if m.value.startswith(b"HANG:"):
            release = Path(m.value[len(b"HANG:"):].decode())
            deadline = time.monotonic() + 120
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
    return _process(self, messages)


processor.StreamProcessor.process = _faulty_process  # type: ignore[method-assign]

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
