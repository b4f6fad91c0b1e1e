"""Rate limits: per device on the device API, per client and credential on refusals.

A device that polls in a tight loop gets 429 instead of starving the fleet. Refused
credentials (401/403) are counted per client address *and* credential: a misconfigured
node repeating its bad token gets 429 for that token, unchecked. Past the same count for
the address as a whole, every credential it gets wrong answers 429 too (no more telling
401 from 403 to a guesser), but a good token from that address is still served: one
misconfigured node behind a NAT, or behind a reverse proxy, never locks out the others.
Behind a proxy, list it in ``TRUSTED_PROXIES`` so its ``X-Forwarded-For`` names the
client (``ops.requestlog.TrustedProxyFix``); from any other peer that header is ignored,
or a guesser could name anyone.

Counts live in this process's memory: the hub runs one gunicorn worker, so they are exact.
Every 429 carries ``Retry-After`` and the one JSON error shape. ``RateLimits.limit()``
gives other parts of the hub (the dashboard's logins) a counter of their own.

The counting is done by ``limits``, the engine under flask-limiter (same maintainer), used
directly. Two measured costs shaped this (bench/poll_bench.py and an in-process A/B: 1,000
devices polling through gunicorn):

- flask-limiter's per-request hook resolves decorator limits (parsing limit strings,
  walking exemption scopes) and cost about 115 µs a request: more than the rest of a
  poll, twice a bare Flask route. The hub's limits are parsed once here, and a check
  is a dict lookup;
- the ``limits`` memory storage restarts a timer thread every 10 ms to sweep every key,
  over half of the hub's CPU under load. ``LazyMemoryStorage`` expires a window when it
  is next touched instead.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from typing import NoReturn

from flask import Blueprint, Flask, Response, request
from limits import RateLimitItem, parse
from limits.storage import Storage
from limits.strategies import FixedWindowRateLimiter
from werkzeug.exceptions import TooManyRequests

from .errors import error_response

#: Responses that count against the failed-auth limits.
REFUSED = (401, 403)


class LazyMemoryStorage(Storage):
    """Fixed-window counters in a dict, for ``limits``: no background thread."""

    STORAGE_SCHEME = ["dropsync-memory"]
    #: Sweep stale keys after this many new windows, so the dict tracks live clients only.
    SWEEP_EVERY = 10_000

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options):
        self._windows: dict[str, list[float]] = {}  # key -> [count, ends_at]
        self._lock = threading.Lock()
        self._opened = 0
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)

    @property
    def base_exceptions(self) -> type[Exception]:
        return ValueError

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        now = time.time()
        with self._lock:
            window = self._windows.get(key)
            if window is None or window[1] <= now:
                window = self._windows[key] = [0, now + expiry]
                self._opened += 1
                if self._opened % self.SWEEP_EVERY == 0:
                    self._sweep(now)
            window[0] += amount
            return int(window[0])

    def get(self, key: str) -> int:
        window = self._windows.get(key)
        return int(window[0]) if window is not None and window[1] > time.time() else 0

    def get_expiry(self, key: str) -> float:
        window = self._windows.get(key)
        return window[1] if window is not None else time.time()

    def check(self) -> bool:
        return True

    def reset(self) -> int | None:
        with self._lock:
            count = len(self._windows)
            self._windows.clear()
        return count

    def clear(self, key: str) -> None:
        with self._lock:
            self._windows.pop(key, None)

    def _sweep(self, now: float) -> None:
        for key in [k for k, (_, ends_at) in self._windows.items() if ends_at <= now]:
            del self._windows[key]


def client_address() -> str:
    """The address this request comes from. Behind a proxy named in ``TRUSTED_PROXIES``
    it is the one the proxy forwarded: ``ops.requestlog.TrustedProxyFix`` has already put
    it in ``REMOTE_ADDR``, and from any other peer ``X-Forwarded-For`` is ignored."""
    return request.remote_addr or "unknown"


def presented_credential() -> str:
    """A short fingerprint of whatever credential the request carries (or "none"), so a
    refused one can be counted without keeping the secret itself."""
    return credential_fingerprint(request.headers.get("Authorization", ""),
                                  request.headers.get("X-Device-Token", ""))


def credential_fingerprint(authorization: str, device_token: str) -> str:
    """``presented_credential`` from the two header values."""
    presented = authorization + "\0" + device_token
    if presented == "\0":
        return "none"
    return hashlib.sha256(presented.encode()).hexdigest()[:32]


class KeyedLimit:
    """One rate, counted separately per key (an address, a username, a credential)."""

    def __init__(self, strategy: FixedWindowRateLimiter, rate: str | RateLimitItem,
                 scope: str):
        self.strategy = strategy
        self.rate = parse(rate) if isinstance(rate, str) else rate
        self.scope = scope

    def exceeded(self, *key: str) -> bool:
        """Whether ``key`` has used up its rate (does not count)."""
        return not self.strategy.test(self.rate, self.scope, *key)

    def count(self, *key: str) -> bool:
        """Count one for ``key``; False once it is over its rate."""
        return self.strategy.hit(self.rate, self.scope, *key)

    def retry_after_s(self, *key: str) -> int:
        """Whole seconds until ``key``'s window ends, never more than one window."""
        reset_at = self.strategy.get_window_stats(self.rate, self.scope, *key).reset_time
        return min(max(1, math.ceil(reset_at - time.time())), self.rate.get_expiry())

    def too_many(self, *key: str) -> Response:
        """The 429 answer for ``key``, with ``Retry-After``."""
        retry_after = self.retry_after_s(*key)
        response = error_response(
            429, "rate_limited", f"too many requests: the limit is {self.rate}; retry in "
            f"{retry_after} s", {"limit": str(self.rate), "retry_after_s": retry_after})
        response.headers["Retry-After"] = str(retry_after)
        return response

    def refuse(self, *key: str) -> NoReturn:
        raise TooManyRequests(response=self.too_many(*key))


class RateLimited(Exception):
    """Over a rate limit, found outside a request hook (``device_requests.DeviceGate``):
    answered 429 with ``Retry-After`` by ``limit.too_many(*key)``."""

    def __init__(self, limit: KeyedLimit, key: tuple[str, ...]):
        super().__init__(f"rate limited: {limit.scope}")
        self.limit, self.key = limit, key


class RateLimits:
    """The hub's limits, checked in ``before_request`` and counted after."""

    def __init__(self, config: dict, device_limits: dict[str, str],
                 guarded_blueprints: set[str]):
        """``device_limits`` maps a blueprint to the per-device rate on its routes."""
        self.enabled = config["RATE_LIMITS_ENABLED"]
        self.strategy = FixedWindowRateLimiter(LazyMemoryStorage())
        self.per_device = {blueprint: self.limit(blueprint, rate)
                           for blueprint, rate in device_limits.items()}
        rate = config["RATE_LIMIT_FAILED_AUTH"]
        #: Refusals of one credential from one address.
        self.failed_credential = self.limit("failed-auth", rate)
        #: Refusals of any credential from one address.
        self.failed_address = self.limit("failed-auth-address", rate)
        self.guarded_blueprints = guarded_blueprints

    def limit(self, scope: str, rate: str) -> KeyedLimit:
        """A counter of ``rate`` per key, sharing this app's storage (``scope`` keeps its
        keys apart from every other limit's)."""
        return KeyedLimit(self.strategy, rate, scope)

    def check(self) -> None:
        """The failed-credential limit of the guarded blueprints that are not a device's:
        the device blueprints check it, with their own, in ``DeviceGate.admit``."""
        blueprint = request.blueprint
        if not self.enabled or blueprint not in self.guarded_blueprints \
                or blueprint in self.per_device:
            return
        client = (client_address(), presented_credential())
        if self.failed_credential.exceeded(*client):
            self.failed_credential.refuse(*client)

    def count_refusal(self, response: Response) -> Response:
        if not (self.enabled and response.status_code in REFUSED
                and request.blueprint in self.guarded_blueprints):
            return response
        address = client_address()
        self.failed_credential.count(address, presented_credential())
        if not self.failed_address.count(address):
            # this address keeps getting credentials wrong: answer its wrong ones alike
            return self.failed_address.too_many(address)
        return response


def init_app(app: Flask, device_limits: dict[Blueprint, str],
             guarded_blueprints: list[Blueprint]) -> RateLimits:
    """Counters per app: tests build many apps, and counts must not leak between them."""
    limits = RateLimits(app.config, {bp.name: rate for bp, rate in device_limits.items()},
                        {bp.name for bp in guarded_blueprints})
    app.before_request(limits.check)
    app.after_request(limits.count_refusal)
    app.register_error_handler(RateLimited, lambda exc: exc.limit.too_many(*exc.key))
    app.extensions["dropsync.limits"] = limits
    return limits


# -- dashboard logins --------------------------------------------------------------------
class LoginLimits:
    """Failed dashboard logins, counted per username and per client address.

    Only failures count. A username gets ``RATE_LIMIT_LOGIN`` failures from anywhere (a
    guesser of one name is stopped, from however many addresses); an address gets
    ``ADDRESS_FACTOR`` times as many across usernames (a guesser spraying names is stopped
    too), so one operator's typos behind a NAT or a proxy never lock out the others at
    that address. Two ``KeyedLimit`` counters, in storage of their own.
    """

    #: Failures an address may make across usernames, in ``RATE_LIMIT_LOGIN``s.
    ADDRESS_FACTOR = 10

    def __init__(self, config: dict):
        self.enabled = config["RATE_LIMITS_ENABLED"]
        strategy = FixedWindowRateLimiter(LazyMemoryStorage())
        rate = parse(config["RATE_LIMIT_LOGIN"])
        per_address = type(rate)(rate.amount * self.ADDRESS_FACTOR, rate.multiples)
        self.limits = (("username", KeyedLimit(strategy, rate, "login-username")),
                       ("address", KeyedLimit(strategy, per_address, "login-address")))

    def _keyed(self, address: str, username: str):
        keys = {"address": address, "username": username.strip().lower()}
        return [(limit, keys[name]) for name, limit in self.limits]

    def retry_after_s(self, address: str, username: str) -> int | None:
        """Seconds to wait when either count is spent, else None."""
        if not self.enabled:
            return None
        for limit, key in self._keyed(address, username):
            if limit.exceeded(key):
                return limit.retry_after_s(key)
        return None

    def count_failure(self, address: str, username: str) -> None:
        if self.enabled:
            for limit, key in self._keyed(address, username):
                limit.count(key)
