"""An operator's day on the dashboard, in-process: what misled or stopped operators before
(the login throttle of a shared address, a reload that rotated a token again, a device
named "new", an upload to a target that reaches nobody, failed commands nowhere to be
found, a live refresh that never answered 304). The browser tests drive the same pages in
Chromium (test_dashboard_day_browser.py)."""

from __future__ import annotations

import re

import pytest
from dashboard_support import PASSWORD, log_in, page_token

from dropsync.fleet import credentials, devices


@pytest.fixture
def day_settings(settings):
    return {**settings, "ADMIN_PASSWORD": PASSWORD}


@pytest.fixture
def day_app(day_settings):
    from dropsync import create_app

    app = create_app(day_settings)
    yield app
    app.extensions["dropsync"].close()


@pytest.fixture
def hub(day_app):
    return day_app.extensions["dropsync"]


@pytest.fixture
def browser(day_app):
    client = day_app.test_client()
    assert log_in(client).status_code == 302
    return client


def test_one_operators_typos_do_not_lock_out_another_at_the_same_address(day_settings):
    from dropsync import create_app

    app = create_app({**day_settings, "RATE_LIMITS_ENABLED": True})
    try:
        credentials.add_operator(app.extensions["dropsync"].stores, "bob", "bobs-password-1")
        for _ in range(5):
            assert log_in(app.test_client(), password="typo-typo").status_code == 401
        assert log_in(app.test_client()).status_code == 429  # admin's name is spent...
        # ...not the address: bob, behind the same NAT, logs in
        assert log_in(app.test_client(), "bob", "bobs-password-1").status_code == 302
        # an address spraying usernames is still stopped, at ten times the rate
        spray = [log_in(app.test_client(), f"user{i}", "x").status_code for i in range(60)]
        assert spray.count(401) == 45 and spray[45:] == [429] * 15, spray  # 5 + 45 = 50
    finally:
        app.extensions["dropsync"].close()
