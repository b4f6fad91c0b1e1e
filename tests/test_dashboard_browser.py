"""The dashboard in a real headless Chromium (Debian's, through Playwright) against a real
hub started as the README says, with a test device speaking plain HTTP beside it.

One hub and one browser serve the whole module. The tests run in file order: the first
registers the device the others use, and the last one spends the login limit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests
from support import ADMIN_TOKEN, ROOT, HubProcess
from sync_support import bearer, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
PASSWORD = "browser-password-1"
DEVICE = "esp-browser"
ARTIFACTS = ROOT / "tests" / "artifacts"
#: axe-core comes from the npm registry at test time, into a cache outside the repository;
#: the test injects it into the page, the hub never serves it.
AXE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dropsync-tests" / "axe"
AXE_VERSION = "4"
LIVE_TIMEOUT_MS = 15_000  # a bound on a hang; the page refreshes every 2.5 s

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


def axe_source() -> str:
    script = AXE_DIR / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is missing: run tests/system-deps.sh")
        AXE_DIR.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(["npm", "install", "--prefix", str(AXE_DIR), "--no-audit",
                                 "--no-fund", "--no-save", f"axe-core@{AXE_VERSION}"],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0 or not script.exists():
            pytest.skip(f"could not install axe-core from npm: {result.stderr[-500:]}")
    return script.read_text()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is missing: run tests/system-deps.sh")
    hub = HubProcess(tmp_path_factory.mktemp("dashboard-hub"), {
        "DROPSYNC_ADMIN_TOKEN": ADMIN_TOKEN, "DROPSYNC_ADMIN_PASSWORD": PASSWORD,
        "DROPSYNC_HEALTH_SERIES_BUCKET_S": "1", "DROPSYNC_STAGING_SETTLE_S": "0.2",
        "DROPSYNC_POLL_INTERVAL_S": "10", "DROPSYNC_LOG_LEVEL": "WARNING"}).start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def chromium():
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def log_in(page, hub, username="admin", password=PASSWORD):
    page.goto(hub.url + "/dashboard/login")
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_response(lambda r: r.url.endswith("/dashboard/login")
                              and r.request.method == "POST") as answer:
        page.click("button[type=submit]")
    return answer.value


@pytest.fixture(scope="module")
def page(hub, chromium):
    """A logged-in page, in a context that keeps the hub's Content-Security-Policy: any
    refused script, style or connection would show up as a console error."""
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("dialog", lambda dialog: dialog.accept())
    assert log_in(page, hub).status == 302
    expect(page).to_have_url(hub.url + "/dashboard/")
    yield page
    context.close()


class Node:
    """The test device: plain HTTP, as the firmware would speak it."""

    def __init__(self, url: str, token: str):
        self.url = url
        self.session = requests.Session()
        self.session.headers.update(bearer(token))

    def get(self, path: str, **kw):
        response = self.session.get(self.url + path, timeout=15, **kw)
        assert response.status_code in (200, 206), (path, response.status_code, response.text)
        return response

    def post(self, path: str, body: dict):
        response = self.session.post(self.url + path, json=body, timeout=15)
        assert response.status_code in (200, 201), (path, response.status_code, response.text)
        return response.json()


@pytest.fixture(scope="module")
def node(hub, page):
    """Registered from the page; its token read from the page, shown once."""
    page.click("nav >> text=Register")
    page.fill("#id", DEVICE)
    page.fill("#name", "Browser test node")
    page.fill("#groups", "field")
    page.click("button:has-text('Register')")
    token = page.input_value("#device-token")
    assert len(token) >= 32
    snippet = page.text_content("#config-snippet")
    assert f'"{DEVICE}"' in snippet and token in snippet and "#define HUB_URL" in snippet
    node = Node(hub.url, token)
    assert node.get(f"/api/v1/device/ping/{DEVICE}").json()["device_id"] == DEVICE
    return node


def mark_page(page) -> None:
    """A marker a reload would wipe out: live changes must arrive without one."""
    page.evaluate("window.__noReload = true")


def assert_not_reloaded(page) -> None:
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"


def test_a_command_from_the_page_turns_delivered_then_completed_live(page, node, hub):
    page.goto(f"{hub.url}/dashboard/devices/{DEVICE}")
    mark_page(page)
    # Arguments are checked before anything is sent.
    page.fill("#cmd-name", "reboot")
    page.fill("#cmd-args", '{"delay_s": 1')
    expect(page.locator("#cmd-args-error")).to_contain_text("Not valid JSON")
    page.click("#command-form button[type=submit]")
    assert node.get(f"/api/v1/device/status/{DEVICE}").json()["pending_commands"] == 0
    page.fill("#cmd-args", '{"delay_s": 1}')
    expect(page.locator("#cmd-args-error")).to_have_text("")
    page.click("#command-form button[type=submit]")
    result = page.locator("#command-form .form-result")
    expect(result).to_contain_text("queued")
    command_id = int(re.search(r"Command (\d+)", result.text_content())[1])
    state = page.locator(f'#device-commands tr[data-command="{command_id}"] [data-state]')
    expect(state).to_have_text("pending", timeout=LIVE_TIMEOUT_MS)

    handed = node.get(f"/api/v1/device/commands/{DEVICE}").json()["commands"]
    assert [c["id"] for c in handed] == [command_id] and handed[0]["args"] == {"delay_s": 1}
    expect(state).to_have_text("delivered", timeout=LIVE_TIMEOUT_MS)
    node.post(f"/api/v1/device/commands/{DEVICE}/complete",
              {"command_id": command_id, "success": True, "result": {"rebooted": True}})
    expect(state).to_have_text("completed", timeout=LIVE_TIMEOUT_MS)
    assert_not_reloaded(page)
    assert not page.errors, page.errors


def test_an_upload_from_the_page_shows_the_devices_download_progress(page, node, hub):
    content = os.urandom(1024 * 1024)
    page.goto(f"{hub.url}/dashboard/packages")
    mark_page(page)
    page.fill("#upload-target", DEVICE)
    page.set_input_files("#upload-file", files=[{
        "name": "firmware.bin", "mimeType": "application/octet-stream", "buffer": content}])
    page.fill("#upload-path", "fw/firmware.bin")
    page.click("#upload-form button[type=submit]")
    expect(page.locator("#upload-form .form-result")).to_contain_text("Staged",
                                                                      timeout=LIVE_TIMEOUT_MS)
    assert page.eval_on_selector("#upload-progress", "bar => bar.value") == 100

    manifest = node.get(f"/api/v1/files/manifest/{DEVICE}").json()
    entry = next(f for f in manifest["files"] if f["path"] == "fw/firmware.bin")
    quarter_chunks = entry["chunks"] // 4  # 32 KiB chunks: 32 in all
    assert entry["size"] == len(content) and entry["chunks"] == len(content) // 32768
    bar = page.locator(f'#package-rows tr[data-package="{entry["id"]}"] progress')
    expect(bar).to_have_attribute("value", "0", timeout=LIVE_TIMEOUT_MS)
    received = bytearray()
    for quarter in (1, 2, 3):
        for index in range(len(received) // entry["chunk_size"], quarter * quarter_chunks):
            chunk = node.get(f"{entry['url']}/{index}")
            assert hashlib.sha256(chunk.content).hexdigest() == \
                chunk.headers["X-Chunk-SHA256"]
            received += chunk.content
        node.post(f"/api/v1/files/sync-status/{DEVICE}", {
            "package": entry["id"], "version": entry["version"], "state": "downloading",
            "received": len(received)})
        expect(bar).to_have_attribute("value", str(25 * quarter), timeout=LIVE_TIMEOUT_MS)
    for index in range(3 * quarter_chunks, entry["chunks"]):
        received += node.get(f"{entry['url']}/{index}").content
    assert hashlib.sha256(received).hexdigest() == entry["sha256"]
    node.post(f"/api/v1/files/sync-status/{DEVICE}", {
        "package": entry["id"], "version": entry["version"], "state": "applied"})
    expect(bar).to_have_attribute("value", "100", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator(f'#package-rows tr[data-package="{entry["id"]}"]')) \
        .to_contain_text("1 of 1")
    assert_not_reloaded(page)
    assert not page.errors, page.errors


def test_the_device_chart_shows_points_after_heartbeats(page, node, hub):
    page.goto(f"{hub.url}/dashboard/devices/{DEVICE}")
    mark_page(page)
    for n, rssi in enumerate((-71, -66, -62, -58)):
        node.post(f"/api/v1/device/heartbeat/{DEVICE}", {
            "rssi": rssi, "free_heap": 30_000 - 1000 * n, "firmware_version": "1.2.3",
            "uptime_s": 10 + n})
        time.sleep(1.1)  # one point per 1-s bucket in this hub
    charts = page.locator("#device-charts svg[data-points]")
    expect(charts.first).not_to_have_attribute("data-points", re.compile(r"^[0-2]$"),
                                               timeout=LIVE_TIMEOUT_MS)
    for svg in charts.all():
        assert int(svg.get_attribute("data-points")) >= 3
        assert svg.locator("polyline").count() == 1
        assert svg.locator("circle").count() >= 3
    expect(page.locator("#device-state")).to_contain_text("1.2.3")
    assert_not_reloaded(page)


def test_pages_pass_axe_and_are_photographed(hub, chromium, node):
    """axe-core on the overview, devices, device and packages pages; screenshots of them
    (and of the overview on a 360-px phone) for a person to look at."""
    axe = axe_source()
    # Injecting a script into the page needs the hub's CSP set aside, in this context only.
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = context.new_page()
    try:
        assert log_in(page, hub).status == 302
        ARTIFACTS.mkdir(exist_ok=True)
        problems = {}
        for name, path in (("overview", "/dashboard/"), ("devices", "/dashboard/devices"),
                           ("device", f"/dashboard/devices/{DEVICE}"),
                           ("packages", "/dashboard/packages")):
            page.goto(hub.url + path)
            page.add_script_tag(content=axe)
            found = page.evaluate("""async () => {
                const result = await axe.run(document, {resultTypes: ['violations']});
                return result.violations
                    .filter(v => v.impact === 'serious' || v.impact === 'critical')
                    .map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '));
            }""")
            if found:
                problems[name] = found
            page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)
        page.set_viewport_size({"width": 360, "height": 780})
        # Usable on a phone: nothing wider than the screen but the scrolling tables.
        for path in ("/dashboard/devices", f"/dashboard/devices/{DEVICE}",
                     "/dashboard/packages", "/dashboard/commands", "/dashboard/"):
            page.goto(hub.url + path)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 360, (path, width)
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview-360.png"), full_page=True)
        assert not problems, problems
    finally:
        context.close()


def test_twenty_open_dashboards_do_not_delay_a_nodes_poll(page, node, hub):
    """20 pages' worth of live refreshes run flat out while the node polls and completes a
    command. A mechanism that held a server thread per open page (a server-sent-events
    stream under the thread pool) would take all of the hub's threads and the poll would
    never be answered."""
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    stop = threading.Event()
    counts = [0] * 20
    failures: list[str] = []

    def dashboard(slot: int) -> None:
        session = requests.Session()
        session.cookies.update(cookies)
        while not stop.is_set():
            try:
                answer = session.get(f"{hub.url}/dashboard/devices/{DEVICE}?live=1",
                                     headers={"Accept": "application/json"}, timeout=30)
                if answer.status_code != 200 or "regions" not in answer.json():
                    failures.append(f"{answer.status_code} {answer.text[:100]}")
            except requests.RequestException as exc:
                failures.append(repr(exc))
            counts[slot] += 1

    threads = [threading.Thread(target=dashboard, args=(n,), daemon=True) for n in range(20)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: all(counts), timeout=60, message="all 20 dashboards refreshing")
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        queued = requests.post(f"{hub.url}/api/v1/admin/devices/{DEVICE}/command",
                               json={"name": "sync"}, headers=admin, timeout=15)
        assert queued.status_code == 201, queued.text
        before = sum(counts)
        handed = node.get(f"/api/v1/device/commands/{DEVICE}").json()["commands"]
        assert [c["id"] for c in handed] == [queued.json()["id"]]
        done = node.post(f"/api/v1/device/commands/{DEVICE}/complete",
                         {"command_id": handed[0]["id"], "success": True})
        assert done["state"] == "completed"
        # The dashboards were really refreshing all along, not stalled or finished.
        wait_until(lambda: sum(counts) >= before + 20, timeout=60,
                   message="the dashboards kept refreshing")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=40)
    assert not failures, failures[:5]


def test_logged_out_cookies_stranger_posts_and_foreign_origins_are_refused(hub, chromium):
    context = chromium.new_context()
    page = context.new_page()
    try:
        assert log_in(page, hub).status == 302
        old = {c["name"]: c["value"] for c in context.cookies()}
        token = page.get_attribute('meta[name="csrf-token"]', "content")
        session = requests.Session()
        session.cookies.update(old)
        # A post without the CSRF token, and one from another site with it: refused.
        response = session.post(f"{hub.url}/dashboard/devices", data={"id": "forged-1"},
                                allow_redirects=False, timeout=15)
        assert response.status_code == 400 and "CSRF" in response.text
        response = session.post(f"{hub.url}/dashboard/devices",
                                data={"id": "forged-2", "csrf_token": token},
                                headers={"Origin": "http://evil.example"},
                                allow_redirects=False, timeout=15)
        assert response.status_code == 403
        devices = requests.get(f"{hub.url}/api/v1/admin/devices", timeout=15,
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
        assert not {"forged-1", "forged-2"} & {d["id"] for d in devices["devices"]}

        page.click("button:has-text('Log out')")
        expect(page).to_have_url(re.compile(r"/dashboard/login"))
        # The cookie from before the logout no longer opens anything.
        for path in ("/dashboard/", "/dashboard/devices", "/dashboard/packages"):
            response = session.get(hub.url + path, allow_redirects=False, timeout=15)
            assert response.status_code == 302, path
            assert "/dashboard/login" in response.headers["Location"]
        # And without any session every page sends the browser to the login page.
        page.goto(f"{hub.url}/dashboard/devices/{DEVICE}")
        expect(page).to_have_url(re.compile(r"/dashboard/login\?next="))
    finally:
        context.close()


def test_five_wrong_passwords_then_429(hub, chromium):
    """Last in the module: it spends this address's login limit."""
    context = chromium.new_context()
    page = context.new_page()
    try:
        for _ in range(5):
            answer = log_in(page, hub, password="not-the-password")
            assert answer.status == 401
            expect(page.locator("#login-error")).to_contain_text("Wrong username or password")
        answer = log_in(page, hub)
        assert answer.status == 429
        assert int(answer.headers["retry-after"]) >= 1
        expect(page.locator("#login-error")).to_contain_text("Too many failed logins")
    finally:
        context.close()
