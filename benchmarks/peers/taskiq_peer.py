"""The load suite's taskiq + taskiq-nats peer (see BENCHMARKS.md, "Peers").

The broker is taskiq-nats' JetStream pull broker on the suite's own nats-server: a
durable pull consumer on a file-backed stream, each task acknowledged after it ran
(taskiq's default `--ack-type when_saved`; with no result backend that is right after
execution), so a worker that dies leaves its tasks unacknowledged and JetStream
delivers them again after the consumer's ack wait.

    GF_PEER_NATS_URL=nats://… python taskiq_peer.py produce JOBS   # prints JSON
    GF_PEER_NATS_URL=nats://… taskiq worker taskiq_peer:broker --workers 8 --max-async-tasks 8

The producer kicks JOBS no-op tasks with 256 publishes in flight, then waits until the
consumer has no task pending or unacknowledged, and prints
`{"jobs":…,"seconds":…,"jobs_per_sec":…}` (first kick to last acknowledgement).
"""

import asyncio
import json
import os
import sys
import time

from nats.js.api import ConsumerConfig
from taskiq_nats import PullBasedJetStreamBroker

NATS_URL = os.environ.get("GF_PEER_NATS_URL", "nats://127.0.0.1:4222")
DURABLE = "taskiq_peer"
STREAM = "taskiq_peer"
# Messages a worker process fetches per pull request: its task slots (the default, 1,
# costs a round trip per task).
BATCH = int(os.environ.get("GF_PEER_PULL_BATCH", "8"))

broker = PullBasedJetStreamBroker(
    servers=NATS_URL,
    subject="taskiq_peer.tasks",
    stream_name=STREAM,
    durable=DURABLE,
    consumer_config=ConsumerConfig(durable_name=DURABLE, ack_wait=30.0),
    pull_consume_batch=BATCH,
    # Long polls: nats-py raises a timeout taskiq-nats 0.7 does not catch (the
    # listener dies and its tasks wait for the ack wait), so never let one expire.
    pull_consume_timeout=3600.0,
)


@broker.task
async def noop() -> None:
    """Does nothing: the load suite measures the queue, not the work."""


async def produce(jobs: int) -> None:
    await broker.startup()
    in_flight = asyncio.Semaphore(256)

    async def kick() -> None:
        async with in_flight:
            await noop.kiq()

    js = broker.client.jetstream()
    # Acknowledged before this run (the suite's warm-up).
    base = (await js.consumer_info(STREAM, DURABLE)).ack_floor.stream_seq
    started = time.monotonic()
    await asyncio.gather(*(kick() for _ in range(jobs)))
    deadline = started + 300
    while True:
        info = await js.consumer_info(STREAM, DURABLE)
        if info.num_pending == 0 and info.num_ack_pending == 0 and info.ack_floor.stream_seq >= base + jobs:
            break
        if time.monotonic() > deadline:
            sys.exit(f"only {info.ack_floor.stream_seq - base} of {jobs} tasks ran in 300 s")
        await asyncio.sleep(0.01)
    seconds = time.monotonic() - started
    print(json.dumps({"jobs": jobs, "seconds": round(seconds, 3), "jobs_per_sec": round(jobs / seconds, 1)}))
    await broker.shutdown()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "produce":
        sys.exit("usage: GF_PEER_NATS_URL=nats://HOST:PORT taskiq_peer.py produce JOBS")
    asyncio.run(produce(int(sys.argv[2])))
