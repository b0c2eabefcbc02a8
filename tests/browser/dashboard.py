"""The dashboard in a real headless Chromium (Debian's), driven by
Playwright: run by tests/t2_web.rs against a bridge it started.

Usage: dashboard.py BASE_URL OPERATOR_JWT SENTINEL_TOKEN SCREENSHOT.png
Prints one JSON line of findings; exits non-zero on any failure.
"""
import json
import sys
import time
import urllib.request

from playwright.sync_api import expect, sync_playwright

base, jwt, sentinel, screenshot = sys.argv[1:5]
ALERT = {
    "source": "NEXUS",
    "severity": "high",
    "description": "browser test: port scan from 203.0.113.7",
    "actions": [{"type": "notify_operator", "channel": "journal", "message": "seen by the browser test"}],
}


def post_alert():
    request = urllib.request.Request(
        base + "/antibody/alert",
        data=json.dumps(ALERT).encode(),
        headers={"Authorization": "Bearer " + sentinel, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202, response.status
        return json.load(response)["plan_id"]


errors = []
with sync_playwright() as p:
    # As root, Chromium's sandbox cannot start; the page is our own.
    browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("console", lambda m: errors.append("console: " + m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append("page: " + str(e)))
    page.on("requestfailed", lambda r: errors.append("request failed: " + r.url))
    outside = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base.replace("http", "ws", 1)) and not r.url.startswith(base) else None)

    page.goto(base + "/")
    # No token yet: the page asks for one.
    page.wait_for_selector("#token-form:not([hidden])", timeout=15000)
    page.fill("#token", jwt)
    page.click("#token-form button")
    # (expect, not wait_for_function: the page's CSP forbids string eval.)
    expect(page.locator("#connection")).to_have_text("live", timeout=15000)
    expect(page.locator("#healthy")).to_have_text("healthy", timeout=15000)
    stored = page.evaluate("sessionStorage.getItem('antibody.token')")
    assert stored == jwt, "the token is kept in sessionStorage"
    assert page.evaluate("localStorage.length") == 0, "nothing in localStorage"

    # The page fetches each new plan by HTTP for its description. Hold that
    # reply back, so it arrives after the plan's status signals, and make it
    # say in_progress, as a reply read before the plan finished does: the
    # row must not go back (CI once saw it stuck at in_progress).
    held = []
    page.route("**/antibody/plan/*", lambda route: held.append(route))

    plan_id = post_alert()
    posted = time.monotonic()
    # The plan list is not polled: the row reaches success only through the
    # event stream. The wait is longer than the 2 s the test asserts, so
    # that a miss reports how long it took.
    page.wait_for_selector(f'tr[data-plan-id="{plan_id}"] td.status-success', timeout=15000)
    seen_after = time.monotonic() - posted
    row = f'tr[data-plan-id="{plan_id}"]'
    deadline = time.monotonic() + 15
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the page fetched the new plan"
    stale = held.pop(0)
    reply = stale.fetch()
    body = reply.json()
    body["status"] = "in_progress"
    stale.fulfill(response=reply, json=body)
    page.unroute("**/antibody/plan/*")
    for route in held:
        route.continue_()
    expect(page.locator(row + " td").nth(3)).to_have_text(ALERT["description"], timeout=15000)
    assert page.locator(row + " td.status-success").count() == 1, "a late reply set the row back"

    # The plan's actions, with their state and log.
    page.click(f'tr[data-plan-id="{plan_id}"]')
    expect(page.locator("#detail-id")).to_have_text(plan_id, timeout=15000)
    page.wait_for_selector("#actions tbody td.state-applied", timeout=15000)
    log_lines = page.locator("#detail-log li").count()
    assert log_lines > 0, "the plan's log is shown"
    queue = page.text_content("#queue-depth")
    active = page.text_content("#active")
    ledger = page.text_content("#ledger")
    assert ledger.startswith("ok"), ledger
    page.screenshot(path=screenshot, full_page=True)

    # A reload keeps the token (same tab) and connects again without asking.
    page.reload()
    expect(page.locator("#connection")).to_have_text("live", timeout=15000)
    assert page.is_hidden("#token-form")
    browser.close()

result = {
    "plan_id": plan_id,
    "seen_success_after_s": round(seen_after, 3),
    "queue_depth": queue,
    "active_mitigations": active,
    "ledger": ledger,
    "log_lines": log_lines,
    "errors": errors,
    "outside_requests": outside,
}
print(json.dumps(result))
if errors or outside:
    sys.exit(1)
