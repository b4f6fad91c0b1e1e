"""A rollout on the dashboard, in a real headless Chromium against a real hub: started
from the package's page, its waves moving live as devices report, a wave that fails
pausing it by itself, and the operator retrying the failed and resuming it to the end.
The tests run in file order: the first registers the devices the second uses."""

from __future__ import annotations

import os
import re

import pytest
import requests
from dashboard_support import CHROMIUM, CHROMIUM_ARGS, dashboard_hub, log_in_page
from support import ADMIN_TOKEN, ROOT
from sync_support import bearer

pytestmark = pytest.mark.slow

PASSWORD = "rollout-password-1"
LIVE_MS = 15_000  # a bound on a hang; the page refreshes every 2.5 s
DEVICES = [f"pump-{i:02d}" for i in range(10)]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots for a person to look at

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = dashboard_hub(tmp_path_factory.mktemp("rollout-hub"), PASSWORD,
                        STAGING_RELEASE="file=publish,firmware=draft", ROLLOUT_TICK_S="0.5")
    yield hub
    hub.stop()


class Admin:
    def __init__(self, url: str):
        self.url = url + "/api/v1/admin"
        self.headers = bearer(ADMIN_TOKEN)

    def __call__(self, method: str, path: str, **kw):
        headers = {**self.headers, **kw.pop("headers", {})}
        response = requests.request(method, self.url + path, headers=headers, timeout=15,
                                    **kw)
        assert response.status_code < 300, (path, response.status_code, response.text)
        return response.json()


def report(hub, device_id: str, token: str, package: dict, state: str) -> None:
    response = requests.post(f"{hub.url}/api/v1/files/sync-status/{device_id}",
                             headers=bearer(token), timeout=15,
                             json={"package": package["id"], "version": package["version"],
                                   "state": state, **({"reason": "boot loop"}
                                                      if state == "failed" else {})})
    assert response.status_code in (200, 201), response.text


def offered(hub, device_id: str, token: str) -> set[str]:
    response = requests.get(f"{hub.url}/api/v1/files/manifest/{device_id}",
                            headers=bearer(token), timeout=15)
    return {f["id"] for f in response.json()["files"]}


@pytest.fixture(scope="module")
def page(hub):
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.errors = []
        page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.on("dialog", lambda dialog: dialog.accept())
        log_in_page(page, hub.url, PASSWORD)
        yield page
        browser.close()


def wave_states(page) -> list[str]:
    return [page.get_attribute(f'li[data-wave="{i}"]', "class").split()[-1]
            for i in range(page.locator("li[data-wave]").count())]


def test_start_watch_live_pause_by_itself_retry_and_resume(hub, page):
    admin = Admin(hub.url)
    tokens = {d: admin("POST", "/devices/register", json={"device_id": d})["token"]
              for d in DEVICES}
    image = b"\xe9\x03\x02\x20" + os.urandom(6000)
    package = admin("PUT", "/staging/all/firmware/pump.bin", data=image,
                    headers={"Content-Type": "application/octet-stream"})
    assert all(package["id"] not in offered(hub, d, t) for d, t in tokens.items())

    page.goto(f"{hub.url}/dashboard/packages/{package['id']}")
    expect(page.locator("text=Held in a draft")).to_be_visible()
    page.fill("#rollout-canary", "1")
    page.fill("#rollout-waves", "50,100")
    page.fill("#rollout-soak", "0")
    page.fill("#rollout-errors", "0.2")
    page.click("button:has-text('Start the rollout')")
    expect(page).to_have_url(re.compile(r"/dashboard/rollouts/[0-9a-f]+$"))
    rollout_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#h-rollout-state")).to_have_text("running")
    assert wave_states(page) == ["running", "waiting", "waiting"]
    rollout = admin("GET", f"/rollouts/{rollout_id}")
    canary, half, rest = (w["devices"] for w in rollout["waves"])
    assert (len(canary), len(half), len(rest)) == (1, 4, 5)
    page.evaluate("window.__noReload = true")

    # live: the canary succeeds and the 50% wave starts, without a reload
    report(hub, canary[0], tokens[canary[0]], package, "applied")
    expect(page.locator('li[data-wave="1"]')).to_have_class(re.compile(r"\brunning\b"),
                                                            timeout=LIVE_MS)
    expect(page.locator('li[data-wave="0"]')).to_have_class(re.compile(r"\bsucceeded\b"))
    # two of four fail (50% > 20%): the rollout pauses by itself, and the page says why
    report(hub, half[0], tokens[half[0]], package, "applied")
    for device in half[1:3]:
        report(hub, device, tokens[device], package, "failed")
    expect(page.locator("#h-rollout-state")).to_have_text("paused", timeout=LIVE_MS)
    expect(page.locator("#rollout-reason")).to_contain_text("over the error threshold")
    expect(page.locator("#rollout-live")).to_contain_text(f"{half[1]}")
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"
    assert all(package["id"] not in offered(hub, d, tokens[d]) for d in rest)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-paused.png"), full_page=True)
    page.set_viewport_size({"width": 360, "height": 780})
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    page.screenshot(path=str(ARTIFACTS / "dashboard-rollout-paused-360.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    # the overview shows it under way, paused
    page.goto(hub.url + "/dashboard/")
    expect(page.locator("#h-rollouts-now + ul")).to_contain_text("firmware/pump.bin")
    expect(page.locator("#h-rollouts-now + ul")).to_contain_text("paused")
    page.screenshot(path=str(ARTIFACTS / "dashboard-overview-rollouts.png"), full_page=True)

    # the operator fixes the cause, retries the failed and resumes
    page.goto(f"{hub.url}/dashboard/rollouts/{rollout_id}")
    page.click("button:has-text('Retry the failed')")
    expect(page.locator(".flash.ok")).to_be_visible()
    page.click("button:has-text('Resume')")
    expect(page.locator("#h-rollout-state")).to_have_text("running")
    page.evaluate("window.__noReload = true")
    for device in half[1:]:
        report(hub, device, tokens[device], package, "applied")
    expect(page.locator('li[data-wave="2"]')).to_have_class(re.compile(r"\brunning\b"),
                                                            timeout=LIVE_MS)
    assert all(package["id"] in offered(hub, d, tokens[d]) for d in rest)
    for device in rest:
        report(hub, device, tokens[device], package, "applied")
    expect(page.locator("#h-rollout-state")).to_have_text("finished", timeout=LIVE_MS)
    expect(page.locator("#rollout-totals")).to_contain_text("10 of 10 devices succeeded")
    assert page.evaluate("window.__noReload === true"), "the page was reloaded"

    page.goto(hub.url + "/dashboard/rollouts")
    expect(page.locator(f'tr[data-rollout="{rollout_id}"]')).to_contain_text("finished")
    assert not page.errors, page.errors


def test_the_overview_charts_firmware_versions_and_the_list_filters_by_one(hub, page):
    admin = Admin(hub.url)
    versions = {"pump-00": "2.0.0", "pump-01": "2.0.0", "pump-02": "1.9.1"}
    for device, version in versions.items():
        token = admin("POST", f"/devices/{device}/rotate-token")["token"]
        response = requests.post(f"{hub.url}/api/v1/device/heartbeat/{device}",
                                 headers=bearer(token), json={"firmware_version": version},
                                 timeout=15)
        assert response.status_code == 200, response.text
    page.goto(hub.url + "/dashboard/")
    chart = page.locator(".firmware-breakdown")
    expect(chart.locator("li").first).to_contain_text("unknown")  # seven never said
    expect(chart).to_contain_text("2.0.0")
    expect(chart.locator("li", has_text="2.0.0")).to_contain_text("2 devices")
    chart.locator("a", has_text="1.9.1").click()
    expect(page).to_have_url(re.compile(r"/dashboard/devices\?fw=1\.9\.1$"))
    expect(page.locator("#device-total")).to_have_text("1 device")
    expect(page.locator("#device-rows tbody")).to_contain_text("pump-02")
