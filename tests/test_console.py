"""The web console in a real browser: Debian's headless Chromium driven by Playwright (no browser
download), against ``archive serve`` in its own process on the embedded default.

What a user does: sign in with a token, search with the keyboard, open a call (giving a reason first), seek
the player to the middle (the server answers 206 with exactly the recording's bytes there), read a chat
with its card number masked, place a legal hold and have a second legal reviewer approve its release,
start an export, download it and verify the bundle offline, check the audit trail. Screenshots of each
page go to ``tests/screenshots/console-*.png``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.apikit import served
from tests.test_cli import cli_env, run

SHOTS = Path(__file__).parent / "screenshots"
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("console")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    # ten minutes of 8 kHz stereo speech-band noise and tones, as a recorder writes it (19.2 MB, 19 sealed segments)
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "2", "-b", "16", "-e", "signed-integer", str(inbox / "call-7.wav"),
                    "synth", "600", "sine", "300-3000", "pinknoise", "gain", "-6"], check=True)
    (inbox / "call-7.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "recorder", "interaction_id": "call-7"}, "channel": "phone",
        "direction": "inbound", "started_at": "2024-06-03T09:00:00Z", "subject": "Mortgage complaint",
        "participants": [{"role": "agent", "id": "1042", "name": "Wang Fang"},
                         {"role": "customer", "id": "C-881", "name": "Chen Jie", "account": "AC-881"}]}))
    (inbox / "chat-9.json").write_text(json.dumps({
        "schema": "archive-record/1", "source": {"system": "webchat", "interaction_id": "chat-9"}, "channel": "chat",
        "started_at": "2024-06-04T10:00:00Z",
        "participants": [{"role": "agent", "id": "1042", "name": "Wang Fang"}, {"role": "customer", "id": "C-881"}],
        "messages": [{"from": "C-881", "at": "2024-06-04T10:00:05Z", "text": f"My card {CARD} was charged twice"},
                     {"from": "1042", "at": "2024-06-04T10:01:00Z", "text": "<b>I will refund</b> the second charge."}]}))
    run(env, "init")
    for actor, role in (("ann", "auditor"), ("lee", "legal"), ("max", "legal")):
        run(env, "identity", "add", actor, "--role", role)
    run(env, "ingest", str(inbox))
    ids = {r["source"]["interaction_id"]: r["record_id"]
           for r in json.loads(run(env, "search", "", "--json").stdout)["records"]}
    tokens = {a: run(env, "token", "create", a, "--role", r).stdout.decode().strip()
              for a, r in (("ann", "auditor"), ("lee", "legal"), ("max", "legal"))}
    (tmp / "public-key.json").write_bytes(run(env, "keys", "public").stdout)
    SHOTS.mkdir(exist_ok=True)
    with served(env, tmp / "server.log") as base:
        yield {"base": base, "env": env, "ids": ids, "tokens": tokens, "tmp": tmp,
               "call": (inbox / "call-7.wav").read_bytes(), "log": tmp / "server.log"}
    assert "Traceback" not in (tmp / "server.log").read_text()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (scripts/test installs it)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu",
                                                               "--disable-dev-shm-usage", "--autoplay-policy=no-user-gesture-required"])
        yield b
        b.close()


def page_for(browser, site, actor: str | None = None):
    # bypass_csp: Playwright evaluates its waits as strings, which the console's CSP (no eval) refuses
    context = browser.new_context(viewport={"width": 1366, "height": 820}, accept_downloads=True, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    page.goto(site["base"] + "/")
    if actor:
        page.fill("#token", site["tokens"][actor])
        page.click("#sign-in")
        page.wait_for_selector("#nav:not([hidden])")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"console-{name}.png"), full_page=True)


def audit(site, rid: str) -> str:
    return run(site["env"], "audit", "show", "--record", rid).stdout.decode()


def test_sign_in_search_by_keyboard_open_a_call_and_seek_to_the_middle(site, browser):
    page = page_for(browser, site)
    page.wait_for_selector("#token")
    shot(page, "sign-in")
    page.fill("#token", "arc_nope_wrong")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message:not([hidden])")
    assert "unknown token" in page.inner_text("#message")
    page.fill("#token", site["tokens"]["ann"])
    page.keyboard.press("Enter")
    page.wait_for_selector("table.results")
    assert page.inner_text("#who") == "ann · auditor"

    # the keyboard alone: / to the search box, a query, Enter, Tab to the first result, Enter
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"
    page.keyboard.type("agent:1042 channel:phone")
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelectorAll('table.results tbody tr').length === 1")
    assert "Mortgage complaint" in page.inner_text("table.results")
    assert "1 record(s)" in page.inner_text("#total")
    shot(page, "search")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('open')"):
            break
    else:
        pytest.fail("the first result cannot be reached with Tab")

    captured: list[dict] = []

    def seek_requests(route):  # the player's own requests; a seek past what it has read is captured whole
        wanted = route.request.headers.get("range", "")
        if wanted and not wanted.startswith("bytes=0-"):
            response = route.fetch()
            captured.append({"range": wanted, "status": response.status, "headers": response.headers,
                             "body": response.body()})
            route.fulfill(response=response)
        else:
            route.continue_()

    page.route("**/parts/audio?**", seek_requests)
    page.keyboard.press("Enter")
    page.wait_for_selector("#reason-dialog[open]")
    shot(page, "reason")
    page.keyboard.type("complaint C-2024-117")
    page.keyboard.press("Enter")
    page.wait_for_selector("#h-retention")
    page.wait_for_function("(() => { const a = document.querySelector('audio'); return a && a.readyState >= 1 && "
                           "isFinite(a.duration) && a.duration > 0; })()", timeout=20000)
    assert abs(page.evaluate("document.querySelector('audio').duration") - 600) < 1
    page.click("#middle-audio")
    page.wait_for_function("(() => { const a = document.querySelector('audio'); return !a.seeking && "
                           "a.readyState >= 2 && Math.abs(a.currentTime - a.duration / 2) < 1; })()", timeout=20000)
    deadline = time.monotonic() + 10
    while not captured and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert captured, "seeking to the middle made no Range request"
    audio, seek = site["call"], captured[0]
    assert seek["status"] == 206
    first, last, size = (int(x) for x in
                         seek["headers"]["content-range"].removeprefix("bytes ").replace("/", "-").split("-"))
    assert size == len(audio) and 0.4 * size < first < 0.6 * size
    assert seek["body"] == audio[first:last + 1]  # exactly the recording's bytes at the middle
    shot(page, "record-call")
    assert "ann (auditor)" in page.inner_text("#h-access + table")
    trail = audit(site, site["ids"]["call-7"])
    assert "ann (auditor)  view ok  reason: complaint C-2024-117" in trail
    assert "ann (auditor)  retrieve ok  reason: complaint C-2024-117" in trail
    assert page.errors == []


def test_a_chat_reads_as_a_thread_with_the_card_number_masked_and_markup_shown_as_text(site, browser):
    page = page_for(browser, site, "ann")
    rid = site["ids"]["chat-9"]
    page.goto(f"{site['base']}/#/records/{rid}")
    page.wait_for_selector("#reason-dialog[open]")
    page.click("#reason-cancel")  # no reason: nothing is shown
    page.wait_for_selector("#message:not([hidden])")
    assert "reason is needed" in page.inner_text("#message")
    assert " view " not in audit(site, rid)
    page.click("text=Give a reason")
    page.fill("#reason-input", "QA sample 2024-W23")
    page.click("#reason-ok")
    page.wait_for_selector("ol.thread li")
    text = page.inner_text("ol.thread")
    assert "**** **** **** 1111" in text and CARD not in page.content()
    assert "<b>I will refund</b>" in text and page.locator("ol.thread b").count() == 0
    shot(page, "record-chat")
    assert page.errors == []


def test_holds_take_two_legal_reviewers_and_an_export_downloads_and_verifies(site, browser):
    rid = site["ids"]["call-7"]
    auditor = page_for(browser, site, "ann")
    auditor.goto(site["base"] + "/#/holds")
    auditor.wait_for_selector("h1:has-text('Legal holds')")
    assert auditor.locator("#place-hold").count() == 0  # an auditor may not place holds

    lee = page_for(browser, site, "lee")
    lee.goto(f"{site['base']}/#/holds?record={rid}")
    lee.wait_for_selector("#place-hold")
    assert lee.input_value("#hold-records") == rid
    lee.fill("#hold-case", "CASE-7")
    lee.fill("#hold-reason", "litigation notice 2024-06-10")
    lee.click("#place-hold")
    lee.wait_for_selector("text=Hold CASE-7 placed on 1 record(s).")
    lee.wait_for_selector("#request-release-CASE-7")
    shot(lee, "holds")
    lee.fill("#release-reason-CASE-7", "settled out of court")
    lee.click("#request-release-CASE-7")
    lee.wait_for_selector("text=a second legal reviewer must approve it")
    request_id = lee.inner_text("#message").split("(")[1].split(")")[0]
    assert lee.locator(f"#approve-{request_id}").count() == 0  # not by the one who asked

    reviewer = page_for(browser, site, "max")
    reviewer.goto(site["base"] + "/#/holds")
    reviewer.wait_for_selector(f"#approve-{request_id}")
    reviewer.fill(f"#approve-reason-{request_id}", "checked the settlement")
    reviewer.click(f"#approve-{request_id}")
    reviewer.wait_for_selector("text=1 record(s) released from CASE-7")
    shot(reviewer, "holds-released")
    holds = json.loads(run(site["env"], "hold", "list", "--json").stdout)
    assert [(h["case"], h["active"]) for h in holds] == [("CASE-7", False)]

    lee.goto(site["base"] + "/#/exports")
    lee.wait_for_selector("#start-export")
    lee.fill("#export-case", "CASE-7")
    lee.fill("#export-query", "customer:C-881")
    lee.fill("#export-reason", "production to opposing counsel")
    lee.click("#start-export")
    lee.wait_for_selector("#export-jobs a[id^=download-]", timeout=60000)
    shot(lee, "exports")
    with lee.expect_download() as info:
        lee.click("#export-jobs a[id^=download-]")
    bundle = site["tmp"] / "downloaded.zip"
    info.value.save_as(bundle)
    verdict = run(site["env"], "verify-bundle", str(bundle), "--public-key", str(site["tmp"] / "public-key.json"))
    assert "bundle verified" in verdict.stdout.decode() and "2 record(s)" in verdict.stdout.decode()
    trail = audit(site, rid)
    assert "lee (legal)  export-download ok" in trail and "max (legal)  approve ok" in trail
    assert lee.errors == [] and reviewer.errors == []


def test_findings_and_status_pages_and_the_audit_trail_verifies(site, browser):
    page = page_for(browser, site, "ann")
    page.goto(site["base"] + "/#/findings")
    page.wait_for_selector("h1:has-text('Findings')")
    shot(page, "findings")
    page.goto(site["base"] + "/#/status")
    page.wait_for_selector("#verify-audit")
    page.click("#verify-audit")
    page.wait_for_selector("#verify-result:has-text('Verified')")
    shot(page, "status")
    page.click("#sign-out")
    page.wait_for_selector("#token")
    page.goto(site["base"] + "/#/search")  # signed out: the cookie is gone
    page.wait_for_selector("#token")
    assert page.errors == []
