"""The report in a real browser: headless Chromium driven over the DevTools protocol.

Chromium is started with ``--remote-debugging-pipe`` (commands on fd 3, events on fd 4,
NUL-separated JSON), so no websocket or extra Python package is needed. The test records
every network request and console message while the report loads, reads the rendered page
back, and saves a screenshot of the first screen (``test-artifacts/report.png``), the whole
page (``report-full.png``), the mitigation report's first screen and a PDF print.
It skips, saying why, only when no Chromium binary is found (``scripts/install-chromium.sh``
installs Debian's ``chromium``).
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import ARTIFACTS, plugin
from report_helpers import PAYLOAD, body, hostile, mitigation_results

WIDTH, HEIGHT = 1280, 800  # a laptop screen: the verdict must be readable without scrolling


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome"):
        if path := shutil.which(name):
            return path
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over Chromium's debugging pipe."""

    def __init__(self, exe: str, profile: Path, *, timeout: float = 60.0):
        self.timeout = timeout
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # move the child's ends above 10 so the dup2 onto 3 and 4 below cannot clobber one another
        child_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_child_r), os.close(from_child_w)

        def wire_fds():  # in the child, before exec: fd 3 = commands in, fd 4 = messages out
            os.dup2(child_r, 3)
            os.dup2(child_w, 4)

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
             "--mute-audio", "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-pipe",
             '--host-resolver-rules=MAP * ~NOTFOUND', f"--window-size={WIDTH},{HEIGHT}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=wire_fds)
        os.close(child_r), os.close(child_w)
        self.w, self.r = to_child_w, from_child_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []
        self.session: str | None = None

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("no message from Chromium in time")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed the pipe (exit code {self.proc.poll()})")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def send(self, method: str, params: dict | None = None, *, session: bool = True) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            m = self._read_message(deadline)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        for i, m in enumerate(self.events):
            if m.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self._read_message(deadline)
            if m.get("method") == method:
                return m
            self.events.append(m)

    def open_page(self) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})

    def load(self, path: Path) -> dict:
        """Navigate to ``path``; return what happened while it loaded."""
        self.events.clear()
        self.send("Page.navigate", {"url": path.resolve().as_uri()})
        self.wait_event("Page.loadEventFired")
        self.send("Runtime.evaluate", {"expression": "1"})  # flush events queued before the load finished
        seen = [m for m in self.events if m.get("sessionId") == self.session]
        requests = [m["params"]["request"]["url"] for m in seen if m.get("method") == "Network.requestWillBeSent"]
        console = [m["params"] for m in seen if m.get("method") == "Runtime.consoleAPICalled"]
        errors = ([m["params"]["entry"] for m in seen
                   if m.get("method") == "Log.entryAdded" and m["params"]["entry"]["level"] == "error"]
                  + [m["params"] for m in seen if m.get("method") == "Runtime.exceptionThrown"]
                  + [c for c in console if c.get("type") in ("error", "assert")])
        return {"requests": requests, "console": console, "errors": errors}

    def evaluate(self, expression: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"]["value"]

    def screenshot(self, out: Path, *, full: bool = False) -> None:
        params: dict = {"format": "png"}
        if full:
            h = self.evaluate("document.documentElement.scrollHeight")
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": h, "scale": 1})
        out.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def pdf(self, out: Path) -> None:
        out.write_bytes(base64.b64decode(self.send("Page.printToPDF", {"printBackground": True})["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.w), os.close(self.r)


PAGE_FACTS = """JSON.stringify((() => {
  const rect = s => { const e = document.querySelector(s); return e ? e.getBoundingClientRect() : null; };
  const firstWhy = rect('#verdict ul.why li');
  return {
    scripts: document.scripts.length,
    headings: [...document.querySelectorAll('h1,h2,h3,h4,h5,h6')].map(h => +h.tagName[1]),
    sections: [...document.querySelectorAll('section[id]')].map(s => s.id),
    verdict: document.querySelector('#verdict') ? document.querySelector('#verdict').innerText : '',
    answerBottom: rect('#verdict .answer') ? rect('#verdict .answer').bottom : 1e9,
    badgeBottom: rect('#verdict h2') ? rect('#verdict h2').bottom : 1e9,
    whyBottom: firstWhy ? firstWhy.bottom : 1e9,
    firedBottom: rect('#verdict ul.fired') ? rect('#verdict ul.fired').bottom : 1e9,
    images: [...document.images].map(i => ({alt: i.alt, decoded: i.complete && i.naturalWidth > 0})),
    svgs: [...document.querySelectorAll('svg')].map(s => ({
      role: s.getAttribute('role'), title: !!s.querySelector('title'), width: s.getBoundingClientRect().width})),
    overflow: document.documentElement.scrollWidth - window.innerWidth,
    // every element's right edge, scroll containers included: a table cut off or scrolled sideways is not read
    overflowing: [...document.querySelectorAll('body *')].filter(e => {
      const r = e.getBoundingClientRect(); return r.width > 0 && r.right > window.innerWidth + 1;
    }).slice(0, 5).map(e => e.tagName + ' ' + (e.innerText || '').slice(0, 60)),
    text: document.body.innerText,
  };
})())"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = chromium_binary()
    if exe is None:
        pytest.skip("no Chromium found (looked for chromium, chromium-browser, google-chrome); "
                    "run scripts/install-chromium.sh (needs root and apt) to install Debian's chromium")
    dt = DevTools(exe, tmp_path_factory.mktemp("chromium-profile"))
    try:
        dt.open_page()
        yield dt
    finally:
        dt.close()


def _write(tmp_path: Path, name: str, html: str) -> Path:
    p = tmp_path / name
    p.write_text(html, encoding="utf-8")
    return p


def _check_page(browser: DevTools, path: Path, sections: tuple[str, ...]) -> dict:
    seen = browser.load(path)
    assert seen["errors"] == [], seen["errors"]
    assert seen["console"] == [], seen["console"]
    # the report itself is the only request; its images are inline data
    other = [u for u in seen["requests"] if u != path.resolve().as_uri() and not u.startswith("data:")]
    assert other == [], f"the report made network requests: {other}"
    facts = json.loads(browser.evaluate(PAGE_FACTS))
    assert facts["scripts"] == 0
    assert facts["headings"][0] == 1 and all(b <= a + 1 for a, b in zip(facts["headings"], facts["headings"][1:]))
    for sid in sections:
        assert sid in facts["sections"], sid
    # "is it safe, and why" is on the first screen: level, answer, first reason and the rules that fired
    for key in ("badgeBottom", "answerBottom", "whyBottom", "firedBottom"):
        assert facts[key] <= HEIGHT, (key, facts[key])
    assert all(i["decoded"] and i["alt"] for i in facts["images"]), facts["images"]
    assert all(s["role"] == "img" and s["title"] and s["width"] > 0 for s in facts["svgs"])
    assert facts["overflow"] <= 0, "the page scrolls sideways on a laptop screen"
    assert facts["overflowing"] == [], facts["overflowing"]
    return facts


# Letter paper at 96 px/in less the report's print margins (12 mm at the sides, 14 mm top and bottom).
PRINT_WIDTH, PRINT_HEIGHT = 816 - 2 * 45, 1056 - 2 * 53


def _page_one_shows_the_verdict(browser: DevTools) -> None:
    """In print layout, the verdict badge and answer end within the first page, and the verdict box
    is not kept whole (which would push it to page 2 when it is taller than what is left of page 1)."""
    browser.send("Emulation.setEmulatedMedia", {"media": "print"})
    browser.send("Emulation.setDeviceMetricsOverride",
                 {"width": PRINT_WIDTH, "height": PRINT_HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    try:
        f = json.loads(browser.evaluate("""JSON.stringify((() => {
          const v = document.querySelector('#verdict');
          return {answer: document.querySelector('#verdict .answer').getBoundingClientRect().bottom + window.scrollY,
                  top: v.getBoundingClientRect().top + window.scrollY, height: v.getBoundingClientRect().height,
                  avoid: getComputedStyle(v).breakInside};
        })())"""))
    finally:
        browser.send("Emulation.setEmulatedMedia", {"media": ""})
        browser.send("Emulation.setDeviceMetricsOverride",
                     {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False})
    assert f["answer"] <= PRINT_HEIGHT, f
    assert f["avoid"] != "avoid" or f["top"] + f["height"] <= PRINT_HEIGHT, f


def test_scan_report_in_chromium(browser, digits_scan, tmp_path):
    from privaudit.reports import render_html

    ARTIFACTS.mkdir(exist_ok=True)
    path = _write(tmp_path, "report.html", render_html(body(digits_scan)))
    facts = _check_page(browser, path, ("verdict", "membership", "replication", "quality", "rules", "limits",
                                        "provenance"))
    level = digits_scan["verdict"]["level"]
    assert level.upper() in facts["verdict"]  # the badge text (CSS upper-cases it)
    nn = plugin(digits_scan, "nn")
    assert len(facts["images"]) >= 2 * len(nn["details"]["pairs"])
    assert f"{100 * nn['metrics']['copy_fraction']['value']:.1f}%" in facts["text"]
    browser.screenshot(ARTIFACTS / "report.png")
    browser.screenshot(ARTIFACTS / "report-full.png", full=True)
    browser.pdf(ARTIFACTS / "report.pdf")
    _page_one_shows_the_verdict(browser)
    assert (ARTIFACTS / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (ARTIFACTS / "report.pdf").read_bytes()[:5] == b"%PDF-"


def test_mitigation_report_in_chromium(browser, digits_scan, null_scan, tmp_path):
    from privaudit.reports import render_html

    ARTIFACTS.mkdir(exist_ok=True)
    path = _write(tmp_path, "mitigation.html", render_html(mitigation_results(digits_scan, null_scan)))
    facts = _check_page(browser, path, ("verdict", "before-after", "membership", "replication", "limits",
                                        "provenance"))
    assert "before mitigation" in facts["verdict"]
    _page_one_shows_the_verdict(browser)
    browser.screenshot(ARTIFACTS / "report-mitigation.png")


def test_hostile_names_stay_text_in_chromium(browser, digits_scan, tmp_path):
    from privaudit.reports import render_html

    path = _write(tmp_path, "hostile.html", render_html(hostile(digits_scan)))
    facts = _check_page(browser, path, ("verdict", "membership", "replication"))
    assert PAYLOAD in facts["text"]  # shown, as text, and nothing ran (no script element, no console output)


def test_the_harness_sees_requests_and_console_errors(browser, tmp_path):
    """Control: a page that does load a remote image and log an error is caught by the same checks."""
    path = _write(tmp_path, "bad.html", '<!doctype html><title>bad</title><img alt="x" src="http://example.invalid/x.png">'
                                        '<script>console.error("boom")</script>')
    seen = browser.load(path)
    assert "http://example.invalid/x.png" in seen["requests"]
    assert any(c.get("type") == "error" for c in seen["console"])
