"""An operator's day in a real headless Chromium against a real hub: times drawn in the
browser, a live page that keeps a text selection and a focused button, every page at 1366
and 360 px with nothing wider than the screen and no short word broken (screenshots in
tests/artifacts), and a session that ends or a hub that stops shown at the top of the
page. The tests run in file order: the last one stops the hub."""

from __future__ import annotations

import re

import pytest
import requests
from dashboard_support import CHROMIUM, CHROMIUM_ARGS, dashboard_hub, log_in_page
from support import ADMIN_TOKEN, ROOT
from sync_support import bearer

pytestmark = pytest.mark.slow

PASSWORD = "day-password-1"
ARTIFACTS = ROOT / "tests" / "artifacts"
LIVE_MS = 15_000
ADMIN = bearer(ADMIN_TOKEN)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = dashboard_hub(tmp_path_factory.mktemp("day-hub"), PASSWORD)
    for i in range(12):
        token = requests.post(f"{hub.url}/api/v1/admin/devices/register", headers=ADMIN,
                              json={"id": f"greenhouse-pump-{i:02d}", "groups": ["field"]},
                              timeout=10).json()["token"]
        requests.post(f"{hub.url}/api/v1/device/heartbeat/greenhouse-pump-{i:02d}",
                      headers=bearer(token), timeout=10,
                      json={"rssi": -50 - i, "free_heap": 30000 + i, "firmware_version": "1.4.0"})
    requests.put(f"{hub.url}/api/v1/admin/staging/group-field/config/a-rather-long-file-"
                 "name-for-the-pumps.json", headers=ADMIN, data=b"{}", timeout=10)
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def browser():
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def logged_in(browser, hub, width=1366, height=900):
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    log_in_page(page, hub.url, PASSWORD)
    return context, page


def send(hub, target, name):
    response = requests.post(f"{hub.url}/api/v1/admin/commands", headers=ADMIN, timeout=10,
                             json={"target": target, "name": name})
    assert response.status_code == 201, response.text
    return response.json()


def test_times_are_drawn_in_the_browser_and_a_selection_and_focus_survive_refreshes(
        browser, hub):
    context, page = logged_in(browser, hub)
    try:
        page.goto(hub.url + "/dashboard/devices")
        cell = page.locator("time.ago").first
        expect(cell).to_have_text(re.compile(r"^\d+ s ago \(\d\d:\d\d:\d\d\)$"))
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+", cell.get_attribute("title"))
        # select a device's id, as an operator copying it would; refreshes come and go
        page.evaluate("""() => {
            const link = document.querySelector('#device-rows tbody a');
            const range = document.createRange();
            range.selectNodeContents(link);
            window.getSelection().removeAllRanges();
            window.getSelection().addRange(range);
        }""")
        page.wait_for_timeout(6000)  # two refreshes and more
        assert page.evaluate("window.getSelection().toString()") == "greenhouse-pump-00"

        # a focused Cancel button does not stop its list from updating
        first = send(hub, "greenhouse-pump-00", "blink")
        page.goto(hub.url + "/dashboard/commands")
        page.locator(f"form[action='/dashboard/commands/{first['id']}/cancel'] button").focus()
        second = send(hub, "greenhouse-pump-01", "water")
        expect(page.locator("#command-rows")).to_contain_text(f"#{second['id']}",
                                                              timeout=LIVE_MS)
        assert page.evaluate("document.activeElement.closest('form').getAttribute('action')") \
            == f"/dashboard/commands/{first['id']}/cancel"
    finally:
        context.close()


PAGES = ["/dashboard/", "/dashboard/devices", "/dashboard/devices/greenhouse-pump-00",
         "/dashboard/commands", "/dashboard/packages", "/dashboard/rollouts",
         "/dashboard/pending", "/dashboard/failed", "/dashboard/register",
         "/dashboard/operators", "/dashboard/activity", "/dashboard/sites"]

#: Text nodes of one short word that a table cell broke over two lines.
BROKEN_WORDS = """() => {
    const broken = [];
    for (const cell of document.querySelectorAll('td, th, dd, .tile, .badge')) {
        const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
        for (let node = walker.nextNode(); node; node = walker.nextNode()) {
            const word = node.textContent.trim();
            if (!word || /\\s/.test(word) || word.length > 16) continue;
            const range = document.createRange();
            range.selectNodeContents(node);
            const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
            if (lines.size > 1) broken.push(word);
        }
    }
    return broken;
}"""


def test_every_page_fits_a_phone_and_breaks_no_short_word(browser, hub):
    context, page = logged_in(browser, hub)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        # the token page too, the one time it shows
        page.goto(hub.url + "/dashboard/devices/greenhouse-pump-11")
        page.click("button:has-text('Rotate token')")
        expect(page.locator("#device-token")).to_be_visible()
        token_url = page.url
        for width in (1366, 360):
            page.set_viewport_size({"width": width, "height": 900 if width > 400 else 780})
            for path in [*PAGES, token_url]:
                page.goto(path if path.startswith("http") else hub.url + path)
                page.wait_for_timeout(100)
                name = path.rstrip("/").rsplit("/", 1)[-1].split("?")[0] or "overview"
                page.screenshot(path=str(ARTIFACTS / f"day-{name}-{width}.png"), full_page=True)
                overflow = page.evaluate("document.documentElement.scrollWidth")
                assert overflow <= width, (path, width, overflow)
                assert page.evaluate(BROKEN_WORDS) == [], (path, width)
                heights = page.evaluate("""() => [...document.querySelectorAll('svg text.axis')]
                    .map(t => t.getBoundingClientRect().height)""")
                assert all(h >= 9 for h in heights), (path, width, heights)  # legible
    finally:
        context.close()


def test_a_dark_theme_follows_the_systems_setting(browser, hub):
    for scheme, dark in (("light", False), ("dark", True)):
        context = browser.new_context(viewport={"width": 1366, "height": 900},
                                      color_scheme=scheme)
        page = context.new_page()
        try:
            log_in_page(page, hub.url, PASSWORD)
            page.goto(hub.url + "/dashboard/devices")
            background, ink = page.evaluate("""() => [getComputedStyle(document.documentElement)
                .backgroundColor, getComputedStyle(document.querySelector('main')).color]""")
            brightness = [sum(map(int, re.findall(r"\d+", c)[:3])) / 3 for c in (background, ink)]
            assert (brightness[0] < 60 and brightness[1] > 180) == dark, (scheme, background, ink)
            page.screenshot(path=str(ARTIFACTS / f"day-devices-{scheme}-1366.png"))
        finally:
            context.close()


def test_an_ended_session_says_so_at_the_top_with_a_login_link(browser, hub):
    context, page = logged_in(browser, hub)
    try:
        page.goto(hub.url + "/dashboard/devices")
        expect(page.locator("#live-banner")).to_be_hidden()
        # the session ends on the hub (a logout in another tab, a password change)
        other = context.new_page()
        other.goto(hub.url + "/dashboard/")
        other.click("button:has-text('Log out')")
        banner = page.locator("#live-banner")
        expect(banner).to_be_visible(timeout=LIVE_MS)
        expect(banner).to_contain_text("Your session has ended")
        link = banner.locator("a", has_text="Log in again")
        assert link.get_attribute("href") == "/dashboard/login?next=%2Fdashboard%2Fdevices"
    finally:
        context.close()


def test_a_stopped_hub_is_shown_at_the_top_and_the_page_marked_stale(browser, hub):
    context, page = logged_in(browser, hub)
    try:
        page.goto(hub.url + "/dashboard/")
        expect(page.locator("#live-banner")).to_be_hidden()
        hub.stop()
        banner = page.locator("#live-banner")
        expect(banner).to_be_visible(timeout=LIVE_MS)
        expect(banner).to_contain_text("The hub is not answering")
        assert "stale" in page.get_attribute("#main", "class")
        page.screenshot(path=str(ARTIFACTS / "day-hub-stopped-1366.png"))
    finally:
        context.close()
