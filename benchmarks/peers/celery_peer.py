"""The load suite's Celery + Redis peer (see BENCHMARKS.md, "Peers").

Crash recovery on, as Celery's documentation describes it: `task_acks_late` (a task
is acknowledged after it ran, so one whose worker dies is delivered again once the
Redis transport's visibility timeout passes) and `task_reject_on_worker_lost` (a task
whose pool process was killed goes back to the queue instead of failing). For
throughput, as the documentation's optimizing guide says for many short tasks: results
ignored (no result backend round trip) and a prefetch multiplier above 1.

    GF_PEER_REDIS_URL=redis://… python celery_peer.py produce JOBS   # prints JSON
    GF_PEER_REDIS_URL=redis://… celery -A celery_peer worker --concurrency 8 ...

The producer sends JOBS no-op tasks from 8 threads, then waits until the queue and the
transport's unacknowledged set are both empty, and prints
`{"jobs":…,"seconds":…,"jobs_per_sec":…}` (first send to last acknowledgement).
"""

import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from celery import Celery

REDIS_URL = os.environ.get("GF_PEER_REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("celery_peer", broker=REDIS_URL)
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("GF_PEER_PREFETCH", "4")),
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="noop")
def noop() -> None:
    """Does nothing: the load suite measures the queue, not the work."""


def produce(jobs: int) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    senders = 8

    def send(share: int) -> None:
        for _ in range(share):
            noop.apply_async()

    shares = [jobs // senders + (1 if i < jobs % senders else 0) for i in range(senders)]
    started = time.monotonic()
    with ThreadPoolExecutor(senders) as pool:
        list(pool.map(send, shares))
    deadline = started + 300
    # Empty twice in a row: the transport moves a message from the queue to the
    # unacknowledged set in two steps, so one look could fall between them.
    empty_since = None
    while True:
        if r.llen("celery") == 0 and r.hlen("unacked") == 0:
            if empty_since is not None:
                break
            empty_since = time.monotonic()
        else:
            empty_since = None
        if time.monotonic() > deadline:
            sys.exit(f"tasks left after 300 s: {r.llen('celery')} queued, {r.hlen('unacked')} unacked")
        time.sleep(0.005)
    seconds = empty_since - started
    print(json.dumps({"jobs": jobs, "seconds": round(seconds, 3), "jobs_per_sec": round(jobs / seconds, 1)}))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "produce":
        sys.exit("usage: GF_PEER_REDIS_URL=redis://HOST:PORT/0 celery_peer.py produce JOBS")
    produce(int(sys.argv[2]))
