"""Fifty boards with one firmware build and one enrollment key, against a real hub: forty
preauthorised by a MAC list come online with no one at the dashboard; ten wait on the
Pending page and are accepted in one bulk action in a real headless Chromium, then come
online too. A rejected board and a replayed token claim get nothing. Then a flood of
enrollments from one address leaves the hub serving polls and the pending list bounded."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time

import aiohttp
import pytest
import requests
from dashboard_support import CHROMIUM, CHROMIUM_ARGS, dashboard_hub, log_in_page
from fleet_support import RunningFleet
from support import ADMIN_TOKEN
from sync_support import bearer, wait_until

pytestmark = pytest.mark.slow

PASSWORD = "enroll-password-1"
BOARDS, PREAUTHORISED = 50, 40
PENDING_MAX = 25
FLOOD = 10_000
ADMIN = bearer(ADMIN_TOKEN)

playwright_sync = pytest.importorskip("playwright.sync_api")
expect = playwright_sync.expect


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    hub = dashboard_hub(tmp_path_factory.mktemp("enroll-hub"), PASSWORD, ENROLL_RETRY_S="1",
                        POLL_INTERVAL_S="2", ENROLL_PENDING_MAX=str(PENDING_MAX))
    yield hub
    hub.stop()


def api(hub, method, path, body=None):
    response = requests.request(method, f"{hub.url}/api/v1/admin{path}", headers=ADMIN,
                                json=body, timeout=30)
    assert response.status_code < 300, response.text
    return response.json()


def online(hub) -> set[str]:
    return {d["id"] for d in api(hub, "GET", "/devices")["devices"]
            if d["connection"] == "online"}


def test_fifty_boards_one_key_forty_preauthorised_ten_accepted_in_one_action(hub, tmp_path):
    key = api(hub, "POST", "/enroll-keys", {"group": "field"})["key"]
    fleet = RunningFleet(hub.url, dict.fromkeys(f"board-{i:02d}" for i in range(BOARDS)),
                         enroll_key=key, ramp_s=2)
    macs = [d.mac for d in fleet.fleet.devices]
    (tmp_path / "batch.csv").write_text(
        "mac,groups\n" + "".join(f"{m},field preauthorised\n" for m in macs[:PREAUTHORISED]))
    said = hub.cli("device", "preauthorize", str(tmp_path / "batch.csv")).stdout
    assert f"Preauthorised {PREAUTHORISED} board(s)" in said
    fleet.start()
    try:
        first = {f"board-{i:02d}" for i in range(PREAUTHORISED)}
        wait_until(lambda: first <= online(hub), timeout=60, every=0.5,
                   message="the preauthorised boards online")
        waiting = [e["hardware_id"] for e in
                   api(hub, "GET", "/enrollments?state=pending")["enrollments"]]
        wait_until(lambda: len(api(hub, "GET", "/enrollments?state=pending")["enrollments"])
                   == BOARDS - PREAUTHORISED, timeout=30, every=0.5,
                   message="ten boards pending")
        waiting = sorted(e["hardware_id"] for e in
                         api(hub, "GET", "/enrollments?state=pending")["enrollments"])
        assert waiting == sorted(macs[PREAUTHORISED:])
        assert not online(hub) & {f"board-{i:02d}" for i in range(PREAUTHORISED, BOARDS)}

        accept_all_on_the_pending_page(hub)
        everyone = {f"board-{i:02d}" for i in range(BOARDS)}
        wait_until(lambda: everyone <= online(hub), timeout=60, every=0.5,
                   message="all fifty boards online")
        groups = {d["id"]: d["groups"] for d in api(hub, "GET", "/devices")["devices"]}
        assert groups["board-00"] == ["field", "preauthorised"]
        assert groups[f"board-{BOARDS - 1}"] == ["field"]  # the key's group

        # a replayed claim of a board's token gets nothing
        board = fleet.fleet.devices[0]
        replay = requests.post(f"{hub.url}/api/v1/enroll/claim", timeout=10,
                               json={"hardware_id": board.mac, "secret": board.secret})
        assert replay.status_code == 410 and replay.json()["error"]["code"] == \
            "already_claimed"
        assert fleet.fleet.stats.errors == {}, fleet.fleet.stats.error_samples
    finally:
        fleet.stop()

    # a rejected board gets nothing, now or later
    secret = os.urandom(32).hex()
    body = {"enroll_key": key, "hardware_id": "02:aa:bb:cc:dd:ee",
            "secret_sha256": hashlib.sha256(secret.encode()).hexdigest()}
    assert requests.post(f"{hub.url}/api/v1/enroll", json=body, timeout=10).status_code \
        == 202
    api(hub, "POST", "/enrollments/reject", {"hardware_ids": ["02:aa:bb:cc:dd:ee"]})
    for path, sent in (("", body), ("/claim", {"hardware_id": "02:aa:bb:cc:dd:ee",
                                               "secret": secret})):
        answer = requests.post(f"{hub.url}/api/v1/enroll{path}", json=sent, timeout=10)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "rejected"


def accept_all_on_the_pending_page(hub) -> None:
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            log_in_page(page, hub.url, PASSWORD)
            expect(page.locator("#pending-count")).to_have_text(str(BOARDS - PREAUTHORISED))
            page.click("nav >> text=Pending")
            expect(page.locator("tr[data-board]")).to_have_count(BOARDS - PREAUTHORISED)
            page.check("#pending-all")  # one box ticks them all
            assert page.locator("input.pending-pick:checked").count() == \
                BOARDS - PREAUTHORISED
            page.click("#accept-selected")
            expect(page.locator(".flash.ok")).to_contain_text(
                f"Accepted {BOARDS - PREAUTHORISED} board(s)")
            expect(page.locator("#no-pending")).to_be_visible()
            expect(page.locator("#pending-count")).to_have_count(0)
            assert not errors, errors
        finally:
            browser.close()


def test_a_flood_of_enrollments_from_one_address_leaves_polls_served(hub):
    """10,000 enrollments, each from a new MAC, from one address, with a node polling
    beside them: every poll is answered, nothing answers 500, and no more than
    ENROLL_PENDING_MAX boards wait (the latency ratio is bench/enroll_flood_bench.py's)."""
    key = api(hub, "POST", "/enroll-keys", {"label": "flood"})["key"]
    token = api(hub, "POST", "/devices/register", {"device_id": "steady"})["token"]
    statuses: dict[int, int] = {}
    polls: list[int] = []

    async def flood(session, start, count):
        for n in range(start, start + count):
            mac = ":".join(f"{b:02x}" for b in (0x06, 0, (n >> 16) & 255, (n >> 8) & 255,
                                                n & 255, 1))
            async with session.post(f"{hub.url}/api/v1/enroll", json={
                    "enroll_key": key, "hardware_id": mac, "secret_sha256": "0" * 64}) as r:
                await r.read()
                statuses[r.status] = statuses.get(r.status, 0) + 1

    async def poll(session, stop):
        while not stop.is_set():
            async with session.get(f"{hub.url}/api/v1/device/commands/steady",
                                   headers=bearer(token)) as r:
                await r.read()
                polls.append(r.status)
            await asyncio.sleep(0.05)

    async def main():
        stop = asyncio.Event()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            poller = asyncio.create_task(poll(session, stop))
            await asyncio.gather(*(flood(session, i * (FLOOD // 20), FLOOD // 20)
                                   for i in range(20)))
            stop.set()
            await poller

    started = time.monotonic()
    asyncio.run(main())
    assert sum(statuses.values()) == FLOOD
    assert 500 not in statuses and set(statuses) <= {202, 503, 429}, statuses
    assert statuses.get(429, 0) > FLOOD // 2, statuses  # the address's limit held
    assert polls and set(polls) == {200}, set(polls)
    pending = api(hub, "GET", "/enrollments?state=pending")["count"]
    assert pending <= PENDING_MAX
    assert re.search(rf"dropsync_enrollments{{state=\"pending\"}} {pending}\.0",
                     requests.get(f"{hub.url}/metrics", headers=ADMIN, timeout=10).text)
    assert time.monotonic() - started < 120
