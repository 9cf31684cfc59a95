#!/usr/bin/env python3
"""Submit a job to Gigafactory over NATS and wait for it, using only the published
contract in schemas/json/: index.json names the subjects, the *.schema.json files
describe every request and reply. Both directions are validated against them.

    python3 clients/python/gf_submit.py --nats-url nats://127.0.0.1:4222 -- echo hello

On a secured NATS, connect with a client's own credential (`gf admin user create DIR
NAME --role submit` prints its URL): `--nats-url nats://NAME:PASSWORD@HOST:4222`. The
client then takes its replies on its own inbox prefix `_CLIENT_<NAME>` (the only one
that user may subscribe to); `--inbox-prefix` overrides it.

Requests are hedged, as `gf submit` does: while one is unanswered the same request
goes out again every `--timeout-per-try`/4 seconds (4 copies at most, the first answer
wins), because a coordinator that is paused or cut off stays in the RPC queue group
until NATS drops it and is given some of the requests meanwhile. The submission
carries an idempotency key (its own, `py-submit-<random hex>`, unless `--idempotency-key`
gives one), so its copies make one job.

Exit status: 0 if the job succeeded, 1 if it ended otherwise, 2 on a refused
submission or a contract violation.
"""

import argparse
import asyncio
import json
import os
import pathlib
import secrets
import sys
import time
from urllib.parse import unquote, urlparse

import jsonschema
import nats

ROOT = pathlib.Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "dead", "cancelled"}
# The operator's user may use any inbox; every other user only its own.
ADMIN_USER = "gf-admin"


def inbox_prefix(url: str):
    """`_CLIENT_<user>` for a URL naming a client's user, else None (the default)."""
    user = urlparse(url).username
    if user is None or unquote(user) == ADMIN_USER:
        return None
    return f"_CLIENT_{unquote(user)}"


class Contract:
    def __init__(self, folder: pathlib.Path):
        self.folder = folder
        self.index = json.loads((folder / "index.json").read_text())

    def schema(self, name: str) -> dict:
        return json.loads((self.folder / name).read_text())

    def check(self, subject: str, side: str, value) -> None:
        name = self.index["subjects"][subject][side]
        jsonschema.validate(value, self.schema(name))


# Copies of one hedged request at most (the first and three more).
HEDGE_COPIES = 4


async def hedged_request(nc, subject: str, payload: bytes, timeout: float):
    """The first answer to `payload` on `subject`, sending a copy every timeout/4 s while
    none has come (NATS hands each copy to a coordinator picked afresh). Only for
    requests whose repeats change nothing the first did not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    gap = timeout / HEDGE_COPIES
    pending, sent, next_copy, last_error = set(), 0, loop.time(), None
    try:
        while True:
            now = loop.time()
            if sent < HEDGE_COPIES and next_copy <= now < deadline:
                pending.add(asyncio.ensure_future(nc.request(subject, payload, timeout=deadline - now)))
                sent += 1
                next_copy = now + gap
            more = sent < HEDGE_COPIES and next_copy < deadline
            if not pending:
                if not more:
                    raise last_error or asyncio.TimeoutError(f"no answer on {subject} in {timeout}s")
                await asyncio.sleep(next_copy - now)
                continue
            wake = next_copy if more else deadline
            done, pending = await asyncio.wait(
                pending, timeout=max(0.0, wake - loop.time()), return_when=asyncio.FIRST_COMPLETED
            )
            for d in done:
                if d.exception() is None:
                    return d.result()
                last_error = d.exception()
            if loop.time() >= deadline and not more and not done:
                raise asyncio.TimeoutError(f"no answer on {subject} in {timeout}s")
    finally:
        for p in pending:
            p.cancel()


async def call(nc, contract: Contract, subject: str, request: dict, timeout: float) -> dict:
    contract.check(subject, "request", request)
    msg = await hedged_request(nc, subject, json.dumps(request).encode(), timeout)
    reply = json.loads(msg.data)
    contract.check(subject, "reply", reply)
    return reply


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nats-url", default=os.environ.get("GF_NATS_URL", "nats://127.0.0.1:4222"))
    ap.add_argument("--schemas", type=pathlib.Path, default=ROOT / "schemas" / "json")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the job")
    ap.add_argument("--priority", type=int)
    ap.add_argument("--idempotency-key", help="the submission's key [default: py-submit-<random hex>]")
    ap.add_argument("--timeout-per-try", type=float, default=8.0, help="seconds each request may take, hedged copies included")
    ap.add_argument("--inbox-prefix", help="reply subjects' prefix [default: _CLIENT_<user> for a client's user]")
    ap.add_argument("command", nargs="+")
    args = ap.parse_args()

    contract = Contract(args.schemas)
    submit, get = "gf.rpc.submit", "gf.rpc.job.get"
    assert submit in contract.index["subjects"] and get in contract.index["subjects"]
    spec = {"command": args.command}
    if args.priority is not None:
        spec["priority"] = args.priority
    # With a key, copies of the submission make one job.
    spec["idempotency_key"] = args.idempotency_key or f"py-submit-{secrets.token_hex(16)}"

    prefix = args.inbox_prefix or inbox_prefix(args.nats_url)
    options = {"inbox_prefix": prefix} if prefix else {}
    nc = await nats.connect(args.nats_url, **options)
    try:
        reply = await call(nc, contract, submit, spec, args.timeout_per_try)
        if "error" in reply:
            print(f"refused: {reply['error']['kind']}: {reply['error']['message']}", file=sys.stderr)
            return 2
        job_id = reply["ok"]["job_id"]
        print(job_id, flush=True)
        deadline = time.monotonic() + args.timeout
        state = None
        while time.monotonic() < deadline:
            rec = await call(nc, contract, get, {"job_id": job_id}, args.timeout_per_try)
            if "ok" in rec:
                if rec["ok"]["state"] != state:
                    state = rec["ok"]["state"]
                    print(f"{job_id} {state}", file=sys.stderr, flush=True)
                if state in TERMINAL:
                    print(json.dumps({"job_id": job_id, "state": state, "attempts": rec["ok"]["attempts"]}))
                    return 0 if state == "succeeded" else 1
            await asyncio.sleep(0.1)
        print(f"{job_id} still {state} after {args.timeout}s", file=sys.stderr)
        return 1
    except jsonschema.ValidationError as e:
        print(f"contract violation: {e.message}", file=sys.stderr)
        return 2
    finally:
        await nc.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
