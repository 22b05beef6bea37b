"""Replay the batches a bench worker processed through the same CheckpointedProcessor in a plain
process, timing each batch: the worker's processing cost without Faust, aiokafka, an event loop or
other threads next to it.

The batches come from the temporary instrumentation in scripts/worker_trace.patch:
    MLE_TRACE=1 MLE_DUMP=/tmp/batches.pkl mle-stream bench --json
    python scripts/replay_worker_batches.py /tmp/batches.pkl [REPEATS]
"""
import gc
import pickle
import sys
import time

from mle_stream.bench import bench_topologies, _SIGNING_KEY
from mle_stream.config import Topics
from mle_stream.stream.app import tune_runtime
from mle_stream.stream.checkpoints import CheckpointedProcessor
from mle_stream.core.signing import Signer
from mle_stream.stream.processor import Incoming, StreamProcessor


def load(path):
    out = []
    with open(path, "rb") as f:
        while True:
            try:
                out.append(pickle.load(f))
            except EOFError:
                return out


def main(path: str, repeat: int = 3) -> None:
    batches = load(path)
    prefix = batches[0][0][0][0].rsplit("mle.", 1)[0]
    topics = Topics(**{name: prefix + value for name, value in Topics().__dict__.items()})
    tune_runtime()
    for _ in range(repeat):
        proc = StreamProcessor(bench_topologies(1), topics, Signer("bench", _SIGNING_KEY))
        tracked = CheckpointedProcessor(proc)
        for k in range(4):
            tracked.assign(k, None)
        total_cpu = total_wall = 0.0
        line = []
        for msgs, keys in batches:
            incoming = [Incoming(*m) for m in msgs]
            w, c = time.perf_counter(), time.thread_time()
            tracked.process(incoming, keys)
            dw, dc = time.perf_counter() - w, time.thread_time() - c
            total_cpu += dc
            total_wall += dw
            line.append(f"{len(msgs)}:{dw:.3f}/{dc:.3f}")
        print(" ".join(line), f"total wall {total_wall:.3f} cpu {total_cpu:.3f} -> {total_cpu / 200_000 * 1e6:.2f} us/prediction",
              proc.counters)
        del proc, tracked
        gc.collect()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 3)
