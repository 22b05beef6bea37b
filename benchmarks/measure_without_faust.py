"""What the worker's processing reaches without Faust: the upper bound of a worker that reads with
confluent-kafka itself, to compare with the worker's ratio to its floor (docs/performance.md).

Over the same messages as `mle-stream bench` (200,000 predictions and their labels, produced once),
each round measures the floor (the bench's own `floor_runs`, the fastest counting) and then a
confluent-kafka consumer that hands batches of BATCH_MESSAGES messages to the worker's
CheckpointedProcessor in its own thread, while librdkafka fetches in its threads, outside the GIL.
Timed like the worker leg: from the first message in hand to the last record processed.

An upper bound, not a worker: no consumer group (partitions assigned), no outputs published and no
checkpoints written (both are small at this size: a few metric snapshots, no checkpoint interval
reached), no rebalance handling.

    python benchmarks/measure_without_faust.py [ROUNDS]
"""

import sys
import time

from mle_stream.bench import throughput as bench
from mle_stream.config import Settings, Topics
from mle_stream.core.signing import Signer
from mle_stream.stream.app import BATCH_MESSAGES, tune_runtime
from mle_stream.stream.checkpoints import CheckpointedProcessor
from mle_stream.stream.processor import Incoming, StreamProcessor

EVENTS = 200_000


def without_faust(servers: str, topics: Topics, messages: int, partitions: int) -> float:
    consumer = bench._reader(servers, [topics.predictions, topics.labels], "without-faust")
    tracked = CheckpointedProcessor(StreamProcessor(bench.bench_topologies(1), topics,
                                                    Signer("bench", bench._SIGNING_KEY)))
    for k in range(partitions):
        tracked.assign(k, None)
    first: float | None = None
    seen = 0
    try:
        while seen < messages:
            batch = consumer.consume(num_messages=BATCH_MESSAGES, timeout=bench._FLOOR_WAIT_S)
            if not batch:
                continue
            if first is None:
                first = time.monotonic()
            tracked.process([Incoming(m.topic(), m.partition(), m.offset(), m.value()) for m in batch],
                            [m.key() for m in batch])
            seen += len(batch)
        assert first is not None
        return time.monotonic() - first
    finally:
        consumer.close()


def main(rounds: int) -> None:
    settings = Settings()
    tune_runtime()
    with bench._fresh_run(settings, None) as run:
        produced = bench.produce(run.servers, run.topics, EVENTS, 1)
        messages = produced.prediction_messages + produced.label_messages
        for r in range(rounds):
            floor = bench.fastest(bench.floor_runs(run.servers, run.topics, produced, 120)).seconds
            seconds = without_faust(run.servers, run.topics, messages, settings.partitions)
            print(f"round {r}: floor {EVENTS / floor:,.0f} predictions/s, processing without Faust "
                  f"{EVENTS / seconds:,.0f}/s, ratio {floor / seconds:.2f}", flush=True)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(__doc__)
        sys.exit(0)
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
