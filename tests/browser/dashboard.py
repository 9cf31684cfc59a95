"""Drives the dashboard in real headless Chromium (Debian's `chromium`, through
Playwright with `executable_path`; no browser download).

Usage: dashboard.py BASE_URL OPERATOR_TOKEN SCREENSHOT_DIR WEBHOOK_SECRET

Run by cli/tests/browser.rs against a real NATS, coordinator (auth on) and worker.
Each scenario waits on what a person would see, with deadlines; any failure exits
non-zero with the reason, and screenshots are saved for a person to look at.
"""

import hashlib
import hmac
import json
import os
import re
import shutil
import sys
import tarfile

from playwright.sync_api import expect, sync_playwright

BASE, TOKEN, SHOTS, WEBHOOK_SECRET = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
os.makedirs(SHOTS, exist_ok=True)
chromium = os.environ.get("GF_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
if not chromium:
    sys.exit("no chromium found: run scripts/install-browser-deps.sh")


def submit(page, spec):
    r = page.request.post(f"{BASE}/api/jobs", data=spec, headers=AUTH)
    assert r.status == 201, f"submit: {r.status} {r.text()}"
    return r.json()["job_id"]


def step(name):
    print(f"-- {name}", flush=True)


with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
    page = browser.new_page(viewport={"width": 1560, "height": 1180}, color_scheme="dark")
    page.on("dialog", lambda d: d.accept())  # the cancel button asks for confirmation
    js_errors = []
    page.on("pageerror", lambda e: js_errors.append(str(e)))

    step("auth is on: the dashboard asks for a token, then goes live")
    page.goto(f"{BASE}/")
    expect(page.locator("#token-dialog")).to_be_visible(timeout=10_000)
    page.fill("#token-input", TOKEN)
    page.click("#token-form button[type=submit]")
    expect(page.locator("#live")).to_have_text(re.compile("live"), timeout=15_000)
    expect(page.locator("#who")).to_contain_text("operator")

    step("a submitted job appears and the processed counter changes")
    counter = page.locator("#counter-processed")
    expect(counter).to_have_text(re.compile(r"^\d"), timeout=10_000)
    before = counter.inner_text()
    quick = submit(page, {"command": ["sh", "-c", "echo quick"]})
    row = page.locator(f'#jobs-table tr[data-id="{quick}"]')
    expect(row).to_be_visible(timeout=10_000)
    expect(row).to_have_attribute("data-state", "succeeded", timeout=20_000)
    expect(counter).not_to_have_text(before, timeout=10_000)
    after = counter.inner_text()
    assert int(after.replace(",", "")) > int(before.replace(",", "")), (before, after)

    step("a job's page shows its log lines as they are written")
    slow = submit(page, {"command": ["sh", "-c", "for i in $(seq 1 40); do echo line-$i; sleep 0.15; done"]})
    page.goto(f"{BASE}/#/job/{slow}")
    log = page.locator("#log")
    expect(log).to_contain_text("line-2", timeout=15_000)
    # Still running when the first lines were on screen: later lines arrive live.
    expect(page.locator("#job-state")).to_have_text("running", timeout=5_000)
    first = log.inner_text()
    assert "line-40" not in first, "the whole log was there at once: not live"
    expect(log).to_contain_text("line-25", timeout=15_000)
    page.screenshot(path=f"{SHOTS}/job-page-live-log.png", full_page=True)
    expect(log).to_contain_text("line-40", timeout=15_000)
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=15_000)
    lines = [l for l in log.inner_text().splitlines() if l.startswith("line-")]
    assert lines == [f"line-{i}" for i in range(1, 41)], lines

    step("the cancel button cancels a running job")
    page.goto(f"{BASE}/#/")
    sleeper = submit(page, {"command": ["sleep", "60"]})
    row = page.locator(f'#jobs-table tr[data-id="{sleeper}"]')
    expect(row).to_have_attribute("data-state", "running", timeout=20_000)
    row.locator("button.act-cancel").click()
    expect(row).to_have_attribute("data-state", "cancelled", timeout=10_000)
    expect(row.locator(".badge")).to_have_text("cancelled")

    step("the requeue button sends the cancelled job round again")
    row.locator("button.act-requeue").click()
    expect(row).to_have_attribute("data-state", "running", timeout=15_000)
    row.locator("button.act-cancel").click()
    expect(row).to_have_attribute("data-state", "cancelled", timeout=10_000)

    step("a job needing a capability nobody has shows up as an error event")
    nowhere = submit(page, {"command": ["true"], "requires": {"gpu": "h100"}})
    err = page.locator(f'#events li.error[data-kind="job_unplaceable"][data-job="{nowhere}"]')
    expect(err).to_be_visible(timeout=15_000)
    expect(err).to_contain_text("unplaceable")
    blocked = page.locator(f'#jobs-table tr[data-id="{nowhere}"]')
    expect(blocked).to_have_attribute("data-state", "blocked", timeout=10_000)

    step("the reject button ends a blocked job")
    blocked.locator("button.act-reject").click()
    expect(blocked).to_have_attribute("data-state", "rejected", timeout=10_000)

    step("budgets show spend against the limit with a burn-down")
    for cost in (0.5, 0.25):
        usage = f'{{"usage":{{"provider":"acme-ai","model":"m1","input_tokens":100,"output_tokens":10,"calls":1,"cost":{cost}}}}}'
        submit(page, {"command": ["sh", "-c", f"echo '{usage}' > \"$GF_RESULT_FILE\""], "product": "acme"})
    r = page.request.put(f"{BASE}/api/budgets/acme", data={"limit_cost": 2.0}, headers=AUTH)
    assert r.status == 200, f"budget: {r.status} {r.text()}"
    expect(page.locator('#budgets tr[data-product="acme"] svg.burn')).to_be_visible(timeout=20_000)
    expect(page.locator('#budgets tr[data-product="acme"]')).to_contain_text("0.75 / 2.00")

    step("a job page shows the score breakdown and the DAG")
    page.goto(f"{BASE}/#/job/{quick}")
    expect(page.locator("#job-explain")).to_contain_text("priority", timeout=10_000)
    expect(page.locator("#job-dag")).to_contain_text("No dependencies", timeout=10_000)
    page.goto(f"{BASE}/#/")

    step("workers table and drain button")
    wrow = page.locator("#workers-table tbody tr").first
    expect(wrow.locator(".badge")).to_have_text("active", timeout=10_000)
    wrow.locator("button.act-drain").click()
    expect(wrow.locator(".badge")).to_have_text("draining", timeout=10_000)
    wrow.locator("button.act-drain").click()
    expect(wrow.locator(".badge")).to_have_text("active", timeout=10_000)

    step("profiles are listed; a job page shows where its values came from")
    expect(page.locator('#profiles tr[data-profile="agent"]')).to_contain_text("an agent on a ticket", timeout=10_000)
    profiled = submit(page, {"command": ["7"], "profile": "agent", "priority": 2})
    page.goto(f"{BASE}/#/job/{profiled}")
    expect(page.locator("#job-kind")).to_have_text("kind agent", timeout=10_000)
    prov = page.locator("#job-provenance")
    expect(prov.locator('tr[data-field="command"]')).to_contain_text("merged")
    expect(prov.locator('tr[data-field="labels"]')).to_contain_text("profile")
    expect(prov.locator('tr[data-field="priority"]')).to_contain_text("submission")
    page.screenshot(path=f"{SHOTS}/job-page-profile.png", full_page=True)
    page.goto(f"{BASE}/#/")

    step("a job's files show on its page, and each link downloads its file byte for byte")
    # Every byte value, over several 128 KiB chunks; a text file in a subdirectory; and
    # a checkpoint. Written by Python so the expected bytes are computed the same way here.
    files = {"blob.bin": bytes(range(256)) * 1200, "out/numbers.txt": "".join(f"{i}\n" for i in range(1, 2001)).encode()}
    writer = ("import os; a = os.environ['GF_ARTIFACTS_DIR']; c = os.environ['GF_CHECKPOINT_DIR']; "
              "os.makedirs(a + '/out'); open(a + '/blob.bin', 'wb').write(bytes(range(256)) * 1200); "
              "open(a + '/out/numbers.txt', 'w').write(''.join(f'{i}\\n' for i in range(1, 2001))); "
              "open(c + '/step', 'w').write('7')")
    leaver = submit(page, {"command": ["python3", "-c", writer]})
    for _ in range(200):
        r = page.request.get(f"{BASE}/api/jobs/{leaver}", headers=AUTH)
        if r.ok and r.json()["state"] in ("succeeded", "failed", "dead"):
            break
        page.wait_for_timeout(100)
    assert r.json()["state"] == "succeeded", f"the job leaving files: {r.text()}"
    page.goto(f"{BASE}/#/job/{leaver}")
    table = page.locator("#artifact-table")
    expect(table).to_be_visible(timeout=10_000)
    page.screenshot(path=f"{SHOTS}/job-page-artifacts.png", full_page=True)
    for name, data in files.items():
        row = table.locator("tbody tr", has_text=name)
        expect(row).to_contain_text(f"{len(data):,}")
        link = row.locator("a")
        with page.expect_download(timeout=10_000) as dl:
            link.click()
        with open(dl.value.path(), "rb") as f:
            got = f.read()
        assert got == data, f"{name}: downloaded {len(got)} bytes that differ from the {len(data)} written"
        assert dl.value.suggested_filename == name.split("/")[-1], dl.value.suggested_filename
    ck = page.locator("#job-artifacts a", has_text="bytes")
    expect(ck).to_be_visible()
    with page.expect_download(timeout=10_000) as dl:
        ck.click()
    with tarfile.open(dl.value.path()) as t:
        step_file = next(m for m in t.getmembers() if m.name.endswith("step"))
        assert t.extractfile(step_file).read() == b"7", "the checkpoint's content"
    page.goto(f"{BASE}/#/")

    step("a tracker webhook's job echoes to a tracker that is down: attempts and error show; redeliver")
    body = json.dumps({"action": "labeled", "issue": {"number": 7, "labels": [{"name": "agent"}]},
                       "repository": {"full_name": "acme/api"}}).encode()
    sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
    r = page.request.post(f"{BASE}/api/bridge/github", data=body, headers={
        "Content-Type": "application/json", "X-GitHub-Event": "issues", "X-GitHub-Delivery": "browser-1",
        "X-Hub-Signature-256": sig})
    assert r.status == 201, f"webhook: {r.status} {r.text()}"
    # The oldest change is being retried (the later ones wait behind it, in order).
    drow = page.locator("#deliveries tr[data-delivery]", has_text="POST").first
    expect(drow).to_contain_text("acme/api#7", timeout=20_000)
    expect(drow).to_have_attribute("data-status", "pending")
    page.screenshot(path=f"{SHOTS}/deliveries.png", full_page=True)
    drow.locator("button.act-redeliver").click()
    expect(page.locator("#toast")).to_contain_text("queued again", timeout=10_000)

    page.wait_for_timeout(2_500)  # let the 2 s stats refresh draw the charts for the picture
    page.screenshot(path=f"{SHOTS}/overview.png", full_page=True)
    assert not js_errors, f"JavaScript errors: {js_errors}"
    browser.close()
print("dashboard: all scenarios passed")
