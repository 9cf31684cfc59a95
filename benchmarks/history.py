#!/usr/bin/env python3
"""History benchmark (issue 19): what a coordinator costs with N finished jobs in history.

For each case it fills a fresh store, then measures with real coordinators, a worker
and the `gf` CLI:

- first page (`--limit 20`) of `gf jobs` for a live state (blocked) and a finished one
  (succeeded): the CLI's wall time, and `GET /api/jobs?state=…&limit=20` (median / max
  of 25);
- a lookup by id of an archived job: `GET /api/jobs/{id}` (median / max of 25 ids);
- `GET /api/stats` (median / max of 25);
- coordinator start to leader (`/health` says `is_leader`);
- leader memory (RSS once its view and counters are current), a freshly started
  standby's memory, and nats-server's;
- leader takeover: the leader stops (SIGTERM, it steps down), and a job submitted at
  that moment with `gf submit --wait` succeeds (the standby acquires the lease, replays
  or resumes its view, dispatches);
- a fresh coordinator's first job: the leader is killed (SIGKILL), a new coordinator
  starts, and a job submitted at its start succeeds (includes the killed leader's
  5 s lease);
- the store on disk.

Cases: `--finished N …` finished jobs past their grace period, plus `--in-grace N …`
finished jobs still inside it, each with `--live` live jobs (default 10,000).

How the store is filled (the fastest honest way): a first coordinator and a worker run
two real jobs, whose records are the templates — one succeeded, one submitted with a
start time a month ahead (`--not-before 30d`), which the leader blocks ("not before
…"). Then, written directly in the record format the coordinator writes, with fresh
UUIDv7 ids:
- finished past their grace period: only in the archive, as the archiver writes them
  (`gf.archive.<creation day>.succeeded.<queue>.<id>`, creation days spread over the
  last 10 days); gf_jobs keeps nothing of them (expired, their markers gone after an
  hour; the interior deletes they would leave in the stream's sequence range are not
  reproduced);
- finished inside their grace period: in gf_jobs as the terminal write makes them
  (`Nats-TTL: 86400`, `Nats-Rollup: sub`), archived by the coordinators' own archiver
  before the measurements start (the case waits for it to catch up);
- live: copies of the blocked template in gf_jobs (blocked, with the same reason, so
  no coordinator rewrites them).
Every publish is acknowledged (fire-and-forget loses messages to the ingest limits).

    python3 benchmarks/history.py --gf target/release/gf \\
        --finished 0 100000 1000000 --in-grace 100000 --live 10000

prints one JSON line per case and then the table (markdown). Needs nats-server
(scripts/install-nats.sh; `--nats-server` or PATH) and nats-py (pip install nats-py).
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


def get(url, timeout=60):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def timed(url, n=25):
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        get(url)
        ts.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(ts), 1), round(max(ts), 1)


def until(what, cond, timeout=600, step=0.05):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        try:
            if cond():
                return time.perf_counter() - t0
        except Exception:
            pass
        time.sleep(step)
    raise RuntimeError(f"timed out waiting for {what}")


class Fleet:
    """nats-server, coordinators, a worker and the CLI, all on one store."""

    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.nats_port = free_port()
        self.url = f"nats://127.0.0.1:{self.nats_port}"
        self.log = open(os.path.join(tmp, "fleet.log"), "w")
        self.nats = subprocess.Popen(
            [args.nats_server, "-js", "-a", "127.0.0.1", "-p", str(self.nats_port),
             "-sd", os.path.join(tmp, "js")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs = []
        until("nats-server", lambda: socket.create_connection(("127.0.0.1", self.nats_port)).close() or True, 20)

    def env(self):
        # Run in the case's own directory with no gigafactory.toml: the defaults.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GF_")}
        return {**env, "GF_LOG": "warn", "GF_NATS_URL": self.url}

    def coordinator(self):
        port = free_port()
        p = subprocess.Popen(
            [self.args.gf, "coordinator", "--http-addr", f"127.0.0.1:{port}", "--no-auth"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.tmp)
        p.http = f"http://127.0.0.1:{port}"
        self.procs.append(p)
        return p

    def worker(self):
        p = subprocess.Popen(
            [self.args.gf, "worker", "--queue", "default", "--slots", "2"],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env(), cwd=self.tmp)
        self.procs.append(p)
        return p

    def gf(self, *argv):
        return subprocess.run([self.args.gf, *argv], capture_output=True, text=True,
                              check=True, env=self.env(), cwd=self.tmp).stdout

    def submit_wait(self, timeout=300):
        """`gf submit --wait -- true` until it is answered (a coordinator that just
        started may not serve requests yet); the job's id."""
        t0 = time.perf_counter()
        while True:
            try:
                return self.gf("submit", "--wait", "--", "true").split()[0]
            except subprocess.CalledProcessError:
                if time.perf_counter() - t0 > timeout:
                    raise
                time.sleep(0.05)

    def stop(self, p, sig=signal.SIGTERM):
        if p.poll() is None:
            p.send_signal(sig)
            p.wait(timeout=60)

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.nats.send_signal(signal.SIGTERM)
        self.nats.wait(timeout=60)
        self.log.close()


def leader(c):
    return get(f"{c.http}/health", timeout=5)["components"]["is_leader"]


def stats(c):
    return get(f"{c.http}/api/stats", timeout=30)["jobs"]


def store_mib(tmp):
    return round(sum(os.path.getsize(os.path.join(d, f))
                     for d, _, fs in os.walk(os.path.join(tmp, "js")) for f in fs) / 2**20)


async def fill(url, done, blocked, finished, in_grace, live):
    """Writes the store; returns some archived ids to look up."""
    import nats
    nc = await nats.connect(url)
    js = nc.jetstream()
    now = int(time.time() * 1000)
    queue = done["spec"]["queue"]
    window = 2000
    lookups = []

    async def publish_all(items):
        for i in range(0, len(items), window):
            await asyncio.gather(*(js.publish(s, p, headers=h) for s, p, h in items[i:i + window]))

    async def stream(n, make):
        batch = []
        for i in range(n):
            batch.append(make(i))
            if len(batch) >= 20000:
                await publish_all(batch)
                batch = []
        await publish_all(batch)

    def past(i):
        # Created over the last 10 days, finished and past their grace period.
        ms = now - random.randint(2 * 86400, 10 * 86400) * 1000
        jid = uuid7(ms)
        if i % 997 == 0:
            lookups.append(jid)
        day = time.strftime("%Y%m%d", time.gmtime(ms / 1000))
        rec = dict(done, id=jid)
        return (f"gf.archive.{day}.succeeded.{queue}.{jid}", json.dumps(rec).encode(),
                {"Nats-Msg-Id": f"{jid}.1"})

    def grace(i):
        # Finished within the last hours: still in gf_jobs, for a day.
        jid = uuid7(now - random.randint(60, 6 * 3600) * 1000)
        rec = dict(done, id=jid)
        return (f"$KV.gf_jobs.{jid}", json.dumps(rec).encode(),
                {"Nats-TTL": "86400", "Nats-Rollup": "sub"})

    def waiting(i):
        jid = uuid7(now - random.randint(0, 3600) * 1000)
        rec = dict(blocked, id=jid)
        return (f"$KV.gf_jobs.{jid}", json.dumps(rec).encode(), None)

    await stream(finished, past)
    await stream(in_grace, grace)
    await stream(live, waiting)
    await nc.close()
    return lookups


async def archiver_pending(url):
    """Job writes not yet behind the archive's stored position (the leader archives
    from its view and stores how far every finished write is archived in
    `gf_archive_position`; docs/history.md)."""
    import nats
    from nats.js.errors import KeyNotFoundError, NotFoundError
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        last = (await js.stream_info("KV_gf_jobs")).state.last_seq
        try:
            kv = await js.key_value("gf_archive_position")
            through = int((await kv.get("through")).value)
        except (KeyNotFoundError, NotFoundError):
            through = 0
        return max(0, last - through)
    finally:
        await nc.close()


def run(args, finished, in_grace):
    tmp = tempfile.mkdtemp(prefix="gf-history-bench-")
    fleet = Fleet(args, tmp)
    res = {"finished": finished, "in_grace": in_grace, "live": args.live}
    try:
        # Templates, written by the fleet itself.
        a = fleet.coordinator()
        until("a leader", lambda: leader(a), 120)
        w = fleet.worker()
        done_id = fleet.submit_wait()
        done = get(f"{a.http}/api/jobs/{done_id}")
        assert done["state"] == "succeeded", done
        blocked_id = fleet.gf("submit", "--not-before", "30d", "--", "true").split()[0]
        until("the template blocked",
              lambda: get(f"{a.http}/api/jobs/{blocked_id}")["state"] == "blocked", 60)
        blocked = get(f"{a.http}/api/jobs/{blocked_id}")
        fleet.stop(a)
        t = time.perf_counter()
        lookups = asyncio.run(fill(fleet.url, done, blocked, finished, in_grace, args.live))
        res["fill_s"] = round(time.perf_counter() - t, 1)
        if in_grace:
            # The coordinators' archiver copies what is in its grace period.
            a = fleet.coordinator()
            until("the archiver to catch up",
                  lambda: asyncio.run(archiver_pending(fleet.url)) == 0, 3600, 1)
            fleet.stop(a)
            lookups = []

        # The leader, started on the filled store.
        a = fleet.coordinator()
        res["start_to_leader_s"] = round(until("a leader", lambda: leader(a), 600, 0.02), 2)
        want = args.live + in_grace + 1
        until("the leader's view and counters",
              lambda: stats(a)["synced"] and stats(a)["by_state"]["blocked"] >= args.live + 1, 600)
        time.sleep(3)
        res["leader_rss_mib"] = round(rss_mib(a.pid))
        res["nats_rss_mib"] = round(rss_mib(fleet.nats.pid))
        s = stats(a)
        res["counted"] = s["total"]
        api = f"{a.http}/api"
        res["api_page_live_ms"] = timed(f"{api}/jobs?state=blocked&limit=20")
        res["api_page_finished_ms"] = timed(f"{api}/jobs?state=succeeded&limit=20")
        res["api_stats_ms"] = timed(f"{api}/stats")
        for name, state in [("gf_jobs_live_ms", "blocked"), ("gf_jobs_finished_ms", "succeeded")]:
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                out = fleet.gf("jobs", "--state", state, "--limit", "20")
                ts.append((time.perf_counter() - t) * 1000)
            assert out.strip(), f"gf jobs --state {state} listed nothing"
            res[name] = (round(statistics.median(ts), 1), round(max(ts), 1))
        if lookups:
            ts = []
            for jid in [random.choice(lookups) for _ in range(25)]:
                t = time.perf_counter()
                rec = get(f"{api}/jobs/{jid}")
                ts.append((time.perf_counter() - t) * 1000)
                assert rec["id"] == jid
            res["api_lookup_archived_ms"] = (round(statistics.median(ts), 1), round(max(ts), 1))

        # A standby: its memory once its own counters are current.
        b = fleet.coordinator()
        until("the standby's counters", lambda: stats(b)["synced"] and stats(b)["total"] >= want, 600)
        time.sleep(3)
        res["standby_rss_mib"] = round(rss_mib(b.pid))

        # Takeover: the leader steps down; a job submitted then runs under the standby.
        fleet.stop(a)
        t = time.perf_counter()
        fleet.submit_wait()
        res["takeover_first_job_s"] = round(time.perf_counter() - t, 2)
        assert leader(b)

        # A fresh coordinator after the leader is killed: its first job.
        fleet.stop(b, signal.SIGKILL)
        t = time.perf_counter()
        c = fleet.coordinator()
        fleet.submit_wait()
        res["fresh_first_job_s"] = round(time.perf_counter() - t, 2)
        res["fresh_rss_mib"] = round(rss_mib(c.pid))
        fleet.stop(c)
        fleet.stop(w)
        res["store_mib"] = store_mib(tmp)
        return res
    finally:
        fleet.close()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


ROWS = [
    ("first page of `gf jobs --state blocked` (live), CLI wall", "gf_jobs_live_ms", "ms"),
    ("first page of `gf jobs --state succeeded`, CLI wall", "gf_jobs_finished_ms", "ms"),
    ("`GET /api/jobs?state=blocked&limit=20`", "api_page_live_ms", "ms"),
    ("`GET /api/jobs?state=succeeded&limit=20`", "api_page_finished_ms", "ms"),
    ("`GET /api/jobs/{id}` of an archived job", "api_lookup_archived_ms", "ms"),
    ("`GET /api/stats`", "api_stats_ms", "ms"),
    ("coordinator start to leader", "start_to_leader_s", "s"),
    ("leader takeover (step-down to a job run by the standby)", "takeover_first_job_s", "s"),
    ("a fresh coordinator's first job, from its start", "fresh_first_job_s", "s"),
    ("leader memory", "leader_rss_mib", "MiB"),
    ("a freshly started standby's memory", "standby_rss_mib", "MiB"),
    ("nats-server memory", "nats_rss_mib", "MiB"),
    ("store on disk", "store_mib", "MiB"),
]


def table(results):
    def head(r):
        if r["in_grace"]:
            return f"{r['in_grace']:,} in grace"
        return f"{r['finished']:,} finished"
    out = ["| with " + f"{results[0]['live']:,} live | " + " | ".join(head(r) for r in results) + " |",
           "| --- |" + " ---: |" * len(results)]
    for label, key, unit in ROWS:
        cells = []
        for r in results:
            v = r.get(key)
            if v is None:
                cells.append("–")
            elif isinstance(v, (tuple, list)):
                cells.append(f"{v[0]:g} {unit} (max {v[1]:g})")
            else:
                cells.append(f"{v:g} {unit}")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gf", default="target/release/gf")
    ap.add_argument("--nats-server", default=shutil.which("nats-server") or "nats-server")
    ap.add_argument("--finished", type=int, nargs="*", default=[0, 100000, 1000000],
                    help="finished jobs past their grace period (one case each)")
    ap.add_argument("--in-grace", type=int, nargs="*", default=[100000],
                    help="finished jobs inside their grace period (one case each)")
    ap.add_argument("--live", type=int, default=10000)
    ap.add_argument("--keep", action="store_true", help="keep each case's store")
    args = ap.parse_args()
    # The processes run in each case's own directory.
    args.gf = os.path.abspath(args.gf)
    args.nats_server = shutil.which(args.nats_server) or os.path.abspath(args.nats_server)
    results = []
    cases = [(n, 0) for n in args.finished] + [(0, n) for n in args.in_grace]
    for finished, in_grace in cases:
        r = run(args, finished, in_grace)
        print(json.dumps(r), flush=True)
        results.append(r)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
