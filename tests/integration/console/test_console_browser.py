"""The console in a real Chromium (Debian's package, driven by Playwright) against a real
redis-server, with a real worker process where jobs must run.

* the overview updates live (server-sent events, no reload) when jobs are enqueued;
* the queue chart renders a non-empty canvas with the demand / desired / replicas / decision
  series from the decision stream the operator writes (written here with the operator's own
  function);
* a dead letter replayed from the UI (log in, replay, confirm) runs again and succeeds;
* a viewer without the right sees no replay button, and a forged POST is refused (CSRF and
  RBAC);
* an XSS payload in a job's args is shown as text and never runs.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import redis
from playwright.sync_api import Browser, Page
from tests.integration.console.conftest import (
    QUEUE,
    TOKEN,
    ConsoleServer,
    FakeKube,
    Worker,
    wait_until,
)

from bgq import decisions
from bgq.client import Client, JobSpec
from bgq.protocol import JobState, QueueName

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]
Q = QueueName.parse(QUEUE)


@pytest.fixture
def page(browser: Browser) -> Any:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == [], f"script errors on the page: {errors}"


@pytest.fixture
def client(redis_url: str) -> Any:
    with Client(redis_url) as c:
        yield c


def log_in(page: Page, console: ConsoleServer, token: str) -> None:
    page.goto(console.url + "/login")
    page.fill("#token", token)
    page.click("#login")
    page.wait_for_url(console.url + "/")


def cell(page: Page, field: str) -> str:
    return page.text_content(f'tr[data-queue="{QUEUE}"] td[data-f="{field}"]') or ""


def test_overview_updates_live_when_jobs_are_enqueued(
    console_factory: Any, page: Page, client: Client
) -> None:
    console = console_factory()
    page.goto(console.url + "/")
    page.wait_for_function("() => Number(document.getElementById('overview').dataset.version) > 0")
    assert cell(page, "backlog") == "0"
    page.evaluate("window.__notReloaded = true")  # gone if the page were reloaded
    client.enqueue_many(QUEUE, [JobSpec("echo", args=[i]) for i in range(7)])
    page.wait_for_function(
        "(q) => document.querySelector(`tr[data-queue=\"${q}\"] td[data-f=\"backlog\"]`)"
        ".textContent === '7'",
        arg=QUEUE,
    )
    assert page.evaluate("window.__notReloaded") is True
    assert page.text_content("#live-state") == "live"
    # a queue that appears in Redis's queue index (an operator decides for it) joins the table
    r = client.redis
    r.zadd(decisions.QUEUES_INDEX, {"shop/invoices": int(time.time() * 1000)})
    page.wait_for_selector('tr[data-queue="shop/invoices"]')
    assert page.evaluate("window.__notReloaded") is True
    # the queue page's figures are live too
    page.goto(f"{console.url}/q/{QUEUE}")
    page.wait_for_function("() => Number(document.querySelector('#queue-live').dataset.version)")
    assert page.text_content('#queue-live [data-f="backlog"]') == "7"
    client.enqueue_many(QUEUE, [JobSpec("echo", args=[i]) for i in range(3)])
    page.wait_for_function(
        "() => document.querySelector('#queue-live [data-f=\"backlog\"]').textContent === '10'"
    )


def _write_decisions(redis_url: str) -> list[decisions.DecisionRecord]:
    """An hour-long story as the operator writes it: demand rises, desired follows (bounded by
    maxReplicas for a while), replicas catch up, then it all goes back to zero."""
    now = int(time.time() * 1000)
    story = [(0, 0, 0, "demand"), (12, 4, 0, "demand"), (40, 10, 4, "maxReplicas"),
             (40, 10, 10, "maxReplicas"), (6, 3, 10, "cooldown"), (0, 0, 3, "demand")]  # fmt: skip
    records = []
    r = redis.Redis.from_url(redis_url)
    try:
        for i in range(60):
            demand, desired, replicas, bound = story[min(i // 10, len(story) - 1)]
            record = decisions.DecisionRecord(
                ms=now - (60 - i) * 55_000, demand=float(demand), desired=desired,
                replicas=replicas, ready=replicas, bound_by=bound,
                reason=f"demand {demand} <b>bold</b>", backlog=demand,
            )  # fmt: skip
            fields: Any = record.fields()
            r.xadd(decisions.decisions_key(Q), fields, id=f"{record.ms}-0")
            records.append(record)
    finally:
        r.close()
    return records


def test_queue_chart_renders_the_expected_series(
    console_factory: Any, page: Page, redis_url: str
) -> None:
    records = _write_decisions(redis_url)
    changes = 1 + sum(1 for a, b in itertools.pairwise(records) if a.desired != b.desired)
    console = console_factory()
    page.goto(f"{console.url}/q/{QUEUE}")
    page.wait_for_function("() => Number(document.getElementById('chart').dataset.points) > 0")
    chart = page.locator("#chart")
    assert chart.get_attribute("data-points") == str(len(records))
    assert chart.get_attribute("data-series") == "demand,desired,replicas,decision"
    assert chart.get_attribute("data-marks") == str(changes)
    # uPlot's legend names the series, and the canvas has drawn pixels
    legend = page.locator(".u-legend").inner_text()
    for name in ("demand", "desired", "replicas", "decision"):
        assert name in legend
    drawn = page.evaluate(
        """() => {
            const c = document.querySelector('#chart canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const colours = new Set();
            let n = 0;
            for (let i = 0; i < d.length; i += 4) {
                if (d[i + 3] > 0) { n++; colours.add(d[i] + ',' + d[i + 1] + ',' + d[i + 2]); }
            }
            return {n, colours: colours.size, w: c.width, h: c.height};
        }"""
    )
    assert drawn["w"] > 300 and drawn["h"] > 200
    assert drawn["n"] > 1000, drawn  # lines, axes and marks, not an empty canvas
    # the series' own colours are on the canvas: demand (orange), desired (blue), replicas (green)
    has = page.evaluate(
        """() => {
            const c = document.querySelector('#chart canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const want = {demand: [217,130,43], desired: [43,108,217], replicas: [47,158,68],
                          decision: [201,42,42]};
            const out = {};
            for (const [k, [r, g, b]] of Object.entries(want)) {
                out[k] = false;
                for (let i = 0; i < d.length; i += 4) {
                    if (d[i+3] > 200 && Math.abs(d[i]-r) < 12 && Math.abs(d[i+1]-g) < 12
                        && Math.abs(d[i+2]-b) < 12) { out[k] = true; break; }
                }
            }
            return out;
        }"""
    )
    assert has == {"demand": True, "desired": True, "replicas": True, "decision": True}
    # the decisions are listed with bound-by and reason, as text
    rows = page.locator("#decisions tbody tr")
    assert rows.count() == changes
    assert "maxReplicas" in page.locator("#decisions").inner_text()
    assert "<b>bold</b>" in page.locator("#decisions").inner_text()
    assert page.locator("#decisions b").count() == 0


def test_replay_of_a_dead_letter_from_the_ui_makes_the_job_succeed(
    console_factory: Any, page: Page, client: Client, worker: Worker
) -> None:
    job = client.enqueue_with(QUEUE, "flaky", args=["A-17"], job_id="order-A-17")

    def died() -> bool:
        return client.get(QUEUE, job.id).state == JobState.DEAD

    wait_until(died, 30, f"job {job.id} to die (worker log: {worker.log})")
    client.redis.set("consoletest:fixed", "1")  # the "payment service" is back
    console = console_factory()
    log_in(page, console, TOKEN)
    page.goto(f"{console.url}/q/{QUEUE}/dead")
    row = page.locator("#dead tbody tr", has_text=job.id)
    assert "payment service is down" in row.inner_text()
    row.locator("a.replay").click()
    assert "Replay 1 dead letter" in (page.text_content("#question") or "")
    page.click("#confirm")
    page.wait_for_url(f"{console.url}/q/{QUEUE}/dead?note=*")
    assert "replayed 1" in (page.text_content("#note") or "")

    def succeeded() -> bool:
        return client.get(QUEUE, job.id).state == JobState.SUCCEEDED

    wait_until(succeeded, 30, f"the replayed job {job.id} to succeed")
    page.goto(f"{console.url}/q/{QUEUE}/job/{job.id}")
    assert page.text_content("#state") == "succeeded"
    assert "order A-17 paid" in (page.text_content("#result") or "")
    assert client.dead_letters(QUEUE) == []


def test_viewer_without_rights_sees_no_replay_button_and_forged_posts_are_refused(
    console_factory: Any, browser: Browser, page: Page, client: Client, redis_url: str
) -> None:
    r = client.redis
    r.xadd(Q.keys.dead, {"id": "gone-1", "reason": "retries-exhausted", "error": "boom",
                         "traceback": "", "env": '{"task": "t"}', "dead_ms": "1"})  # fmt: skip
    kube = FakeKube()
    console = console_factory(kube_auth=kube)
    # alice (ServiceAccount token, RBAC: get only) sees the dead letter but no replay/purge
    log_in(page, console, "viewer-token")
    assert "alice" in (page.text_content("header") or "")
    page.goto(f"{console.url}/q/{QUEUE}/dead")
    assert page.locator("#dead tbody tr", has_text="gone-1").count() == 1
    assert page.locator("a.replay, a.purge, #replay-all, #purge-all").count() == 0
    assert ("viewer-token", "shop", "orders", "update", "deadletters") in kube.calls
    # her POST with a valid CSRF token (from her own page) is refused by RBAC
    status = page.evaluate(
        """async (url) => {
            const token = document.cookie.split('; ').find(c => c.startsWith('csrftoken='))
                .split('=')[1];
            const body = new URLSearchParams({csrftoken: token, action: 'purge', all: '1'});
            const r = await fetch(url, {method: 'POST', body});
            return r.status;
        }""",
        f"{console.url}/q/{QUEUE}/action",
    )
    assert status == 403
    # an admin's session without the CSRF token (a forged form) is refused by the CSRF check
    admin = browser.new_context()
    admin_page = admin.new_page()
    try:
        log_in(admin_page, console, TOKEN)
        forged = admin_page.evaluate(
            """async (url) => (await fetch(url, {method: 'POST', body: new URLSearchParams(
                {csrftoken: 'forged', action: 'purge', all: '1'})})).status""",
            f"{console.url}/q/{QUEUE}/action",
        )
        assert forged == 403
        # a cross-site page submitting a form at the console: the SameSite=Strict cookies are
        # not sent, and the request is refused
        admin_page.set_content(
            f'<form id="f" method="post" action="{console.url}/q/{QUEUE}/action">'
            '<input name="action" value="purge"><input name="all" value="1"></form>'
        )
        with admin_page.expect_navigation():
            admin_page.evaluate("document.getElementById('f').submit()")
        assert admin_page.locator("body").inner_text().startswith(
            "form-urlencoded POST field did not match cookie"
        )
    finally:
        admin.close()
    assert r.xlen(Q.keys.dead) == 1  # nothing was purged
    # anonymous viewers with RBAC configured see no queue at all, and no action link
    anonymous = browser.new_context()
    try:
        anon = anonymous.new_page()
        anon.goto(console.url + "/")
        assert anon.locator("#overview tbody tr").count() == 0
        anon.goto(f"{console.url}/q/{QUEUE}/dead")
        assert anon.text_content("h1") == "401"
    finally:
        anonymous.close()


def test_xss_payload_in_job_args_is_shown_as_text(
    console_factory: Any, page: Page, client: Client
) -> None:
    payload = ['<img src=x onerror="window.__xss=1">', "<script>window.__xss=2</script>",
               {"k": "</pre><b id=owned>x</b>"}]  # fmt: skip
    job = client.enqueue_with(QUEUE, "echo<svg onload=window.__xss=3>", args=payload,
                              kwargs={"<i>": "\u202e\u0000"})  # fmt: skip
    console = console_factory()
    page.goto(f"{console.url}/q/{QUEUE}/job/{job.id}")
    text = page.text_content("#args") or ""
    assert '<img src=x onerror=\\"window.__xss=1\\">' in text
    assert "<script>window.__xss=2</script>" in text
    assert page.locator("#args img, #args script, #owned, svg").count() == 0
    assert page.evaluate("window.__xss") is None
    assert "<i>" in (page.text_content("#kwargs") or "")
    # the task name is shown as text in the job list too
    page.goto(f"{console.url}/q/{QUEUE}/jobs")
    assert "echo<svg onload=window.__xss=3>" in (page.text_content("#jobs") or "")
    assert page.locator("svg").count() == 0
    assert page.evaluate("window.__xss") is None
