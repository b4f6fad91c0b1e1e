"""Download tickets: a signed, expiring part of the url a manifest gives a device.

With ``DOWNLOAD_TICKET_SECRET`` set, a manifest entry's url is
``/api/v1/files/t/<expires>/<sig>/<device>/<package>/<version>`` instead of
``/api/v1/files/download/<device>/<package>/<version>``; devices append ``/<index>`` for
a chunk as before, so nothing changes for them. nginx checks the ticket with its
``secure_link`` module and serves chunks from a cache of the hub's answers (see
``dropsync.ops.nginx``); the hub checks the same ticket and the device's token.

The signature is the form nginx documents for ``secure_link_md5``:
``base64url(md5("<expires><device>/<package>/<version> <secret>"))`` without padding.
MD5 is what nginx offers there; the secret is 32+ random characters, so a forger has to
find a preimage, not a collision (see docs/admin/nginx.md).

``expires`` is rounded up to the end of the next whole ``ttl_s`` window, so a ticket is
good for between one and two windows and a device's manifest changes at most once per
window, not on every request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time

from ..errors import DropSyncError, Forbidden

#: Where ticketed downloads live (the chunk is ``<this>/<index>``).
TICKET_PATH = "/api/v1/files/t/{expires}/{sig}/{device_id}/{package_id}/{version}"
#: What a secret may hold: it is written into nginx's configuration as a quoted string.
SECRET_RE = re.compile(r"[A-Za-z0-9_-]{32,256}")
SIG_LENGTH = 22  # base64url of 16 bytes, unpadded


class TicketExpired(DropSyncError):
    """410: the url is gone for good; the device's next manifest has a fresh one."""

    status, code = 410, "ticket_expired"


def parse_secret(text: str) -> str:
    """The ``DOWNLOAD_TICKET_SECRET`` setting: 32 to 256 of ``A-Z a-z 0-9 _ -``."""
    secret = text.strip()
    if not SECRET_RE.fullmatch(secret):
        raise ValueError("expected 32 to 256 characters of A-Z, a-z, 0-9, '_' and '-' "
                         "(`dropsync nginx-ticket` makes one)")
    return secret


def signature(secret: str, expires: int, device_id: str, package_id: str,
              version: int) -> str:
    """nginx's ``secure_link_md5 "$expires$device/$package/$version $secret"``."""
    text = f"{expires}{device_id}/{package_id}/{version} {secret}"
    digest = hashlib.md5(text.encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class Tickets:
    """Signs and checks download tickets with one secret."""

    def __init__(self, secret: str, ttl_s: int):
        self.secret = secret
        self.ttl_s = ttl_s

    def expiry(self, now: float | None = None) -> int:
        """When a ticket issued now expires: the end of the next whole window."""
        now = time.time() if now is None else now
        return (int(now) // self.ttl_s + 2) * self.ttl_s

    def url(self, device_id: str, package_id: str, version: int, expires: int) -> str:
        return TICKET_PATH.format(
            expires=expires, device_id=device_id, package_id=package_id, version=version,
            sig=signature(self.secret, expires, device_id, package_id, version))

    def check(self, expires: int, sig: str, device_id: str, package_id: str,
              version: int, now: float | None = None) -> None:
        """Raise 403 ``ticket_invalid`` for a signature that is not ours for exactly this
        device, package and version, 410 ``ticket_expired`` for one whose time is over."""
        expected = signature(self.secret, expires, device_id, package_id, version)
        if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")):
            raise Forbidden("this download ticket is not valid for this device, package "
                            "and version; fetch the manifest for a url",
                            code="ticket_invalid")
        now = time.time() if now is None else now
        if expires < now:
            raise TicketExpired(f"this download ticket expired at {expires} (unix time); "
                                "fetch the manifest again for a fresh url",
                                {"expired_at": expires})
