"""A hostile e-mail, archived and then opened by a legal reviewer in a real browser (Debian's Chromium
driven by Playwright, against ``archive serve`` in its own process): no script of the sender's runs,
however it is opened.

The e-mail is issue 25's attack and more of its kind: an HTML body with an inline ``<script>``, an
``<img onerror>``, ``<script src>`` pointing at the same-origin URL of its own attachment and a remote
tracking image; attachments labelled ``application/javascript``, ``text/html``, ``image/svg+xml`` and
``application/xhtml+xml``, each with script. Every script, if it ran, would place a legal hold through the
API as the signed-in reviewer (a ``fetch`` with the console's header and cookie), mark the document it ran
in, set a marker in the console origin's ``localStorage``, request a marker URL and open a dialog.

The reviewer opens it every way the console and the API offer: the record view, the HTML version in its
sandboxed frame, every part's URL navigated to at the top level, the HTML view's URL at the top level, and
every download link. Then the defence in depth: a ``<script>``, a worker, a style sheet and a frame
pointing at the JavaScript attachment, injected into the console's own page (as a script that got in some
other way would), are refused by the server (``Sec-Fetch-Dest``). Nothing runs: no hold, no marker, no
dialog, no remote load — and every access is in the audit trail.

This context does not bypass the pages' CSP (test_console.py's do, for Playwright's waits): here the
browser enforces every policy the server sends.
"""

from __future__ import annotations

import json
import urllib.request
from email.message import EmailMessage

import pytest

from tests.apikit import served
from tests.test_cli import cli_env, run
from tests.test_console import SHOTS, browser  # noqa: F401 — (browser: the module's Chromium fixture)

REASON = "review of a suspicious invoice e-mail"


def payload(where: str) -> str:
    """What the sender's script does: a legal hold through the API with the reviewer's session, and markers.
    Single quotes only, so it also fits in an HTML attribute."""
    return ("(function(){var w='" + where + "';"
            "try{document.documentElement.setAttribute('data-xss',w)}catch(e){}"
            "try{localStorage.setItem('xss',w)}catch(e){}"
            "try{var m=location.pathname.match(/r[a-z2-7]{32}/);"
            "fetch('/api/v1/holds',{method:'POST',credentials:'include',headers:{'X-Archive-Console':'1',"
            "'Content-Type':'application/json'},body:JSON.stringify({case:'XSS-'+w,records:m?[m[0]]:[],"
            "query:'channel:email',reason:'placed by the sender script'})})}catch(e){}"
            "try{new Image().src='/xss-marker/'+w}catch(e){}"
            "try{alert('xss '+w)}catch(e){}})();")


def hostile_email() -> bytes:
    msg = EmailMessage()
    msg["From"] = "Billing <billing@vendor.example>"
    msg["To"] = "Lee Reviewer <lee@bank.example>"
    msg["Subject"] = "Invoice 2024-117"
    msg["Date"] = "Mon, 03 Jun 2024 09:00:00 +0000"
    msg["Message-ID"] = "<invoice-2024-117@vendor.example>"
    msg.set_content("Dear customer, please find the invoice attached.\n")
    # relative URLs: from .../parts/body-html they name .../parts/attachment-1, from .../html the same
    msg.add_alternative(
        "<html><head><meta charset='utf-8'><title>Invoice</title></head><body>"
        "<p id='greeting'>Dear customer, please find the invoice attached.</p>"
        f"<script>{payload('body-inline')}</script>"
        f"<img src='x' onerror=\"{payload('body-onerror')}\">"
        "<script src='attachment-1?reason=x'></script>"
        "<script src='parts/attachment-1?reason=x'></script>"
        "<img id='pixel' src='http://tracker.example/pixel.gif?who=lee'>"
        "</body></html>", subtype="html")
    msg.add_attachment(payload("js-attachment").encode(), maintype="application", subtype="javascript",
                       filename="update.js")
    msg.add_attachment((f"<html><body><p>invoice</p><script>{payload('html-attachment')}</script>"
                        f"<img src='x' onerror=\"{payload('html-attachment-onerror')}\">"
                        "<script src='attachment-1?reason=x'></script></body></html>").encode(),
                       maintype="text", subtype="html", filename="invoice.html")
    msg.add_attachment(("<svg xmlns='http://www.w3.org/2000/svg' xmlns:xlink='http://www.w3.org/1999/xlink' "
                        f"width='10' height='10' onload=\"{payload('svg-onload')}\">"
                        f"<script><![CDATA[{payload('svg-inline')}]]></script>"
                        "<script href='attachment-1?reason=x'/><script xlink:href='attachment-1?reason=x'/>"
                        "</svg>").encode(), maintype="image", subtype="svg+xml", filename="logo.svg")
    msg.add_attachment(("<html xmlns='http://www.w3.org/1999/xhtml'><body><p>page</p>"
                        f"<script><![CDATA[{payload('xhtml-inline')}]]></script>"
                        "<script src='attachment-1?reason=x'/></body></html>").encode(),
                       maintype="application", subtype="xhtml+xml", filename="page.xhtml")
    return msg.as_bytes()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xss")
    env = cli_env(tmp / "home", "admin")
    inbox = tmp / "inbox"
    inbox.mkdir()
    raw = hostile_email()
    (inbox / "invoice.eml").write_bytes(raw)
    run(env, "init")
    run(env, "identity", "add", "lee", "--role", "legal")
    run(env, "ingest", str(inbox))
    rid = json.loads(run(env, "search", "", "--json").stdout)["records"][0]["record_id"]
    token = run(env, "token", "create", "lee", "--role", "legal").stdout.decode().strip()
    with served(env, tmp / "server.log") as base:
        yield {"base": base, "env": env, "rid": rid, "token": token, "tmp": tmp}


def holds(site) -> list[dict]:
    req = urllib.request.Request(site["base"] + "/api/v1/holds", headers={"Authorization": f"Bearer {site['token']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["holds"]


class Watch:
    """Everything that would show a script ran, in every page and frame of one browser context."""

    def __init__(self, context) -> None:
        self.markers: list[str] = []
        self.remote: list[str] = []
        self.dialogs: list[str] = []
        self.downloads: list = []
        self.pages: list = []
        context.route("**/xss-marker/**", self._marker)
        context.route("http://tracker.example/**", self._remote)
        context.on("page", self._page)

    def _marker(self, route) -> None:
        self.markers.append(route.request.url)
        route.fulfill(status=204)

    def _remote(self, route) -> None:
        self.remote.append(route.request.url)
        route.abort()

    def _page(self, page) -> None:
        self.pages.append(page)
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("download", lambda d: self.downloads.append(d))

    def marked_documents(self) -> list[str]:
        found = []
        for page in self.pages:
            for frame in page.frames:
                try:
                    mark = frame.evaluate("document.documentElement && document.documentElement.getAttribute('data-xss')")
                except Exception as e:  # noqa: BLE001 — a frame that navigated away meanwhile
                    mark = f"(unreadable: {e})"
                if mark:
                    found.append(f"{frame.url}: {mark}")
        return found

    def assert_nothing_ran(self, site, step: str) -> None:
        for page in self.pages:
            page.wait_for_load_state("networkidle")  # a fetch the sender's script started has finished
        placed = [h["case"] for h in holds(site)]
        assert placed == [], f"{step}: the sender's script placed a legal hold: {placed}"
        assert self.markers == [], f"{step}: the sender's script ran: {self.markers}"
        assert self.dialogs == [], f"{step}: the sender's script opened a dialog: {self.dialogs}"
        assert self.remote == [], f"{step}: a remote load was made: {self.remote}"
        assert self.marked_documents() == [], f"{step}: script ran in {self.marked_documents()}"


def test_a_hostile_email_opened_every_way_runs_no_script(site, browser):  # noqa: F811
    base, rid = site["base"], site["rid"]
    context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
    watch = Watch(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.fill("#token", site["token"])
    page.click("#sign-in")
    page.wait_for_selector("#nav:not([hidden])")

    # 1. the record view: the plain-text body as text, the parts, the access history
    page.goto(f"{base}/#/records/{rid}")
    page.wait_for_selector("#reason-dialog[open]")
    page.fill("#reason-input", REASON)
    page.click("#reason-ok")
    page.wait_for_selector("#h-retention")
    assert "please find the invoice attached" in page.inner_text("ol.thread")
    detail = json.loads(page.evaluate(f"fetch('/api/v1/records/{rid}', {{headers: {{'X-Archive-Reason': "
                                      f"'{REASON}'}}}}).then(r => r.text())"))
    parts = {p["name"]: p for p in detail["parts"]}
    assert {"message", "body", "body-html", "attachment-1", "attachment-2", "attachment-3", "attachment-4"} <= set(parts)
    assert parts["attachment-1"]["media_type"] == "application/javascript"  # the sender's label, still recorded
    watch.assert_nothing_ran(site, "the record view")

    # 2. every part's URL, and the HTML view's, navigated to at the top level (as a link opened in a tab)
    opened: dict[str, str] = {}
    policies: dict[str, str] = {}
    urls = {name: f"{base}/api/v1/records/{rid}/parts/{name}?reason=x" for name in parts}
    urls["html view"] = f"{base}/api/v1/records/{rid}/html?reason=x"
    for name, url in urls.items():
        tab = context.new_page()
        response = None
        try:
            response = tab.goto(url)
            opened[name] = f"rendered {response.status} {response.headers.get('content-type')}"
        except Exception as e:  # noqa: BLE001 — Playwright reports a navigation that became a download so
            if "Download is starting" not in str(e):
                raise
            opened[name] = "downloaded"
        if opened[name] == "downloaded" and not any(d.page == tab for d in watch.downloads):
            tab.wait_for_event("download")  # (events reach Python only while it waits on the browser)
        watch.assert_nothing_ran(site, f"{name} opened at the top level")
        if response is not None:
            policies[name] = response.headers.get("content-security-policy", "")
    # what renders is sandboxed (no script, an opaque origin); what a browser could make active downloads
    assert all(p.startswith("sandbox; default-src 'none'") for p in policies.values()), policies
    for name in ("message", "body-html", "attachment-1", "attachment-2", "attachment-3", "attachment-4"):
        assert opened[name] == "downloaded", (name, opened[name])
    assert opened["body"].startswith("rendered 200 text/plain"), opened["body"]
    assert opened["html view"].startswith("rendered 200 text/html"), opened["html view"]

    # 3. every download link of the record view: the exact bytes, under a safe name
    links = page.locator("a[download]")
    assert links.count() == len(parts)
    for i in range(links.count()):
        with page.expect_download() as info:
            links.nth(i).click()
        saved = site["tmp"] / f"download-{i}"
        info.value.save_as(saved)
        name = next(n for n in parts if f"/parts/{n}?" in info.value.url)
        assert saved.stat().st_size == parts[name]["size"], name
        assert info.value.suggested_filename.startswith(rid), info.value.suggested_filename
    assert (site["tmp"] / f"download-{list(parts).index('attachment-1')}").read_bytes().startswith(b"(function")
    watch.assert_nothing_ran(site, "the download links")

    # 4. the HTML version, in the console's sandboxed frame: shown, styled, but nothing runs or loads
    page.click("#show-html")
    frame_element = page.wait_for_selector("iframe#html-body")
    assert frame_element.get_attribute("sandbox") == ""  # every restriction: no scripts, no same origin
    frame = frame_element.content_frame()
    frame.wait_for_selector("#greeting")
    assert "please find the invoice attached" in frame.inner_text("#greeting")
    assert frame.evaluate("document.getElementById('pixel').complete && "
                          "document.getElementById('pixel').naturalWidth") == 0  # the pixel was never loaded
    page.screenshot(path=str(SHOTS / "console-email-html.png"), full_page=True)
    watch.assert_nothing_ran(site, "the HTML version in the console")

    # 5. defence in depth: the attachment as a script, worker, style sheet or frame of the console's own page
    script_url = f"/api/v1/records/{rid}/parts/attachment-1?reason=x"
    outcome = page.evaluate("""url => Promise.all([
        new Promise(done => { const s = document.createElement('script'); s.src = url;
          s.onload = () => done('script loaded'); s.onerror = () => done('script refused');
          document.head.append(s); }),
        new Promise(done => { const l = document.createElement('link'); l.rel = 'stylesheet'; l.href = url;
          l.onload = () => done('style loaded'); l.onerror = () => done('style refused');
          document.head.append(l); }),
        fetch(url).then(r => 'fetch ' + r.status),
    ])""", script_url)
    assert outcome == ["script refused", "style refused", "fetch 200"], outcome  # a fetch (Sec-Fetch-Dest: empty) is served
    # a worker has no load event: its error event marks the page, a worker that ran would place the hold
    page.evaluate("""url => { const w = new Worker(url);
        w.onerror = () => document.body.setAttribute('data-worker', 'refused'); }""", script_url)
    page.wait_for_selector("body[data-worker='refused']", state="attached", timeout=15000)
    # a frame: refused by the server as well (the console's CSP and X-Frame-Options aside)
    with page.expect_response(lambda r: "/parts/attachment-1" in r.url and r.request.resource_type == "document") as framed:
        page.evaluate("url => { const f = document.createElement('iframe'); f.src = url; document.body.append(f); }",
                      script_url)
    assert framed.value.status == 403
    watch.assert_nothing_ran(site, "the attachment used as a script")
    assert page.evaluate("localStorage.getItem('xss')") is None

    # every one of those accesses is in the record's audit trail, the refused ones as refused
    trail = run(site["env"], "audit", "show", "--record", rid).stdout.decode()
    assert f"lee (legal)  view ok  reason: {REASON}" in trail
    assert "lee (legal)  retrieve ok" in trail and "lee (legal)  retrieve denied" in trail
    assert errors == []
    context.close()
