#!/usr/bin/env python3
"""History benchmark (issue 19): what a coordinator costs with N finished jobs in history.

Fills a fresh store with N finished jobs already past their grace period (written
directly into GF_ARCHIVE in the record format and subject layout the archiver writes)
plus LIVE pending jobs in gf_jobs, then starts a coordinator and measures:
start to leader, coordinator and nats-server memory, the first page of a live and of a
finished state (GET /api/jobs), a lookup by id of an archived job, /api/stats, and the
store on disk. Every latency is the median / max of 25 reads.

    python3 benchmarks/history.py --gf target/release/gf --finished 0 100000 --live 10000

Needs nats-server (scripts/install-nats.sh) and nats-py (pip install nats-py).
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def uuid7(ms):
    """A UUIDv7 for unix milliseconds `ms` (the coordinator's ids are these)."""
    r = random.getrandbits(74)
    v = (ms & ((1 << 48) - 1)) << 80
    v |= 0x7 << 76
    v |= (r >> 62) << 64  # 12 bits rand_a
    v |= 0b10 << 62
    v |= r & ((1 << 62) - 1)
    return str(uuid.UUID(int=v))


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def timed(url, n=25):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        get(url)
        ts.append((time.perf_counter() - t) * 1000)
    return statistics.median(ts), max(ts)


def start_coordinator(gf, nats_url, http_port, log):
    return subprocess.Popen(
        [gf, "coordinator", "--nats-url", nats_url, "--http-addr",
         f"127.0.0.1:{http_port}", "--no-auth"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GF_LOG": "warn"},
    )


def wait_leader(http_port, timeout=300):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            h = get(f"http://127.0.0.1:{http_port}/health")
            if h.get("is_leader"):
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(0.02)
    raise RuntimeError("no leader")


async def fill(nats_url, template, finished, live):
    import nats
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    now = int(time.time() * 1000)
    archived = []
    window = 2000

    async def publish_all(items):
        for i in range(0, len(items), window):
            await asyncio.gather(*(js.publish(s, p) for s, p in items[i:i + window]))

    batch = []
    for i in range(finished):
        # Created over the last 10 days, finished and past their grace period.
        ms = now - random.randint(2, 10 * 86400) * 1000
        jid = uuid7(ms)
        rec = dict(template, id=jid, state="succeeded")
        day = time.strftime("%Y%m%d", time.gmtime(ms / 1000))
        subject = f"gf.archive.{day}.succeeded.{template['spec']['queue']}.{jid}"
        batch.append((subject, json.dumps(rec).encode()))
        if i % 997 == 0:
            archived.append(jid)
        if len(batch) >= 20000:
            await publish_all(batch)
            batch = []
    await publish_all(batch)
    batch = []
    for _ in range(live):
        jid = uuid7(now - random.randint(0, 3600) * 1000)
        rec = dict(template, id=jid, state="pending")
        batch.append((f"$KV.gf_jobs.{jid}", json.dumps(rec).encode()))
    await publish_all(batch)
    await nc.close()
    return archived


def run(args, finished):
    tmp = tempfile.mkdtemp(prefix="gf-history-bench-")
    nats_port, http_port = free_port(), free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    nats = subprocess.Popen(
        [args.nats_server, "-js", "-a", "127.0.0.1", "-p", str(nats_port), "-sd", tmp],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = open(os.path.join(tmp, "coordinator.log"), "w")
    try:
        time.sleep(0.5)
        # A first coordinator makes the buckets and streams; its one job is the template.
        c = start_coordinator(args.gf, nats_url, http_port, log)
        wait_leader(http_port)
        out = subprocess.run([args.gf, "submit", "--nats-url", nats_url, "--", "true"],
                             capture_output=True, text=True, check=True).stdout.split()[0]
        template = get(f"http://127.0.0.1:{http_port}/api/jobs/{out}")
        c.send_signal(signal.SIGTERM)
        c.wait(timeout=60)
        t = time.perf_counter()
        archived = asyncio.run(fill(nats_url, template, finished, args.live))
        fill_s = time.perf_counter() - t

        c = start_coordinator(args.gf, nats_url, http_port, log)
        to_leader = wait_leader(http_port)
        # Let the first pass and the stats replay settle before reading memory.
        deadline = time.time() + 120
        while time.time() < deadline and not get(f"http://127.0.0.1:{http_port}/api/stats").get("synced"):
            time.sleep(0.1)
        time.sleep(2)
        base = f"http://127.0.0.1:{http_port}/api"
        res = {
            "finished": finished,
            "live": args.live,
            "fill_s": round(fill_s, 1),
            "start_to_leader_s": round(to_leader, 2),
            "coordinator_rss_mib": round(rss_mib(c.pid)),
            "nats_rss_mib": round(rss_mib(nats.pid)),
            "page_live_ms": timed(f"{base}/jobs?state=pending&limit=20"),
            "page_finished_ms": timed(f"{base}/jobs?state=succeeded&limit=20"),
            "stats_ms": timed(f"{base}/stats"),
        }
        if archived:
            ids = [random.choice(archived) for _ in range(25)]
            ts = []
            for jid in ids:
                t = time.perf_counter()
                get(f"{base}/jobs/{jid}")
                ts.append((time.perf_counter() - t) * 1000)
            res["lookup_archived_ms"] = (statistics.median(ts), max(ts))
        t = time.perf_counter()
        subprocess.run([args.gf, "jobs", "--nats-url", nats_url, "--state", "succeeded",
                        "--limit", "20"], capture_output=True, check=True)
        res["gf_jobs_finished_cli_ms"] = round((time.perf_counter() - t) * 1000)
        res["store_mib"] = round(sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs
            if not f.endswith(".log")) / 2**20)
        c.send_signal(signal.SIGTERM)
        c.wait(timeout=60)
        return res
    finally:
        nats.send_signal(signal.SIGTERM)
        nats.wait(timeout=30)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gf", default="target/release/gf")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--finished", type=int, nargs="+", default=[0, 100000])
    ap.add_argument("--live", type=int, default=10000)
    args = ap.parse_args()
    for n in args.finished:
        r = run(args, n)
        fmt = lambda v: f"{v[0]:.1f} / {v[1]:.1f}" if isinstance(v, tuple) else str(v)
        print(json.dumps(r))
        print("  ".join(f"{k}={fmt(v)}" for k, v in r.items()), flush=True)


if __name__ == "__main__":
    main()
