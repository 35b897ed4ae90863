"""CPU per event of the ingest worker's own work, without HTTP: Segment batch → canonical events
→ log records framed for the writer. The baseline is the floor of any JSON-in, JSON-out
service: decoding the same batches with msgspec and encoding each message again.

    python -m bench.translate [--batches 400] [--repeat 7]

The ingest benchmark is bound by this figure on a small machine (the worker's CPU, not the
log's I/O, limits throughput), so it is the one to drive down.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

from bench.loadgen import batch_body
from worldflow.collect.ingest import Ingestor
from worldflow.events.catalogue import Catalogue
from worldflow.events.segment import SegmentTranslator, split_batch
from worldflow.log import AppendResult, LogRecord, QuarantineRecord
from worldflow.metrics import Metrics

BATCH = 100


class FramingLog:
    """Stands in for the writer: frames the records exactly as the real client does."""

    def __init__(self) -> None:
        self.encoder = msgspec.msgpack.Encoder()

    async def append(
        self, records: Sequence[LogRecord], quarantined: Sequence[QuarantineRecord] = ()
    ) -> AppendResult:
        self.encoder.encode((1, records, quarantined))
        return AppendResult(frozenset())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    bodies = [batch_body("t", i, BATCH) for i in range(args.batches)]  # distinct: cold caches
    events = args.batches * BATCH
    translator = SegmentTranslator(Catalogue.default(), 32 * 1024, 86400)
    ingestor = Ingestor(FramingLog(), Metrics())  # type: ignore[arg-type]
    decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
    received_at = datetime.now(UTC)

    def baseline() -> None:
        for body in bodies:
            for message in decoder.decode(body)["batch"]:
                encoder.encode(message)

    async def worldflow() -> None:
        for body in bodies:
            raws, sent_at, _key, context = split_batch(body)
            items = translator.translate(
                raws, workspace_id="w", source_id="s", received_at=received_at,
                sent_at=sent_at, batch_context=context,
            )  # fmt: skip
            await ingestor.ingest(
                items, workspace_id="w", source_id="s", channel="segment",
                received_at=received_at,
            )  # fmt: skip

    def measure(run: object) -> float:
        times = []
        for _ in range(args.repeat):
            started = time.process_time()
            if asyncio.iscoroutinefunction(run):
                asyncio.run(run())
            else:
                run()  # type: ignore[operator]
            times.append((time.process_time() - started) / events * 1e6)
        return statistics.median(times)

    base, ours = measure(baseline), measure(worldflow)
    print(f"{events:,} events in batches of {BATCH}, median of {args.repeat} runs (CPU time)")
    print(f"baseline, msgspec decode + encode: {base:6.2f} µs/event")
    print(f"worldflow translate + frame:       {ours:6.2f} µs/event")
    print(f"ratio worldflow / baseline:        {ours / base:6.1f}")


if __name__ == "__main__":
    main()
