"""Secrets: device and admin tokens, operator passwords.

Tokens are random (192 bits), shown once, and stored only as a SHA-256 hash. A fast hash is
right here because the tokens are high-entropy: nothing is gained by slowing a guess at a
192-bit secret, and every device request must verify one. Operator passwords are chosen by
people, so they get werkzeug's slow salted hash instead.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from typing import Any

from werkzeug.security import check_password_hash, generate_password_hash

from ..clock import now_iso
from ..errors import Conflict, NotFound, Unauthorized, ValidationFailed
from ..store import Document, KeyedTable, Stores

TOKEN_BYTES = 24
MIN_PASSWORD_LENGTH = 8


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_match(token_hash: str, token: str) -> bool:
    return hmac.compare_digest(token_hash, hash_token(token))


# -- admin tokens and enrollment keys ----------------------------------------------------
def issue_secret(table: KeyedTable, **fields: Any) -> tuple[Document, str]:
    """A new random secret kept in ``table`` only as its hash: the record and the secret,
    shown this once (admin tokens, enrollment keys)."""
    secret = new_token()
    record = table.insert({"id": secrets.token_hex(4), **fields,
                           "token_hash": hash_token(secret), "created_at": now_iso()})
    return record, secret


def create_admin_token(stores: Stores, label: str) -> tuple[Document, str]:
    return issue_secret(stores.admin_tokens, label=label)


def revoke_admin_token(stores: Stores, token_id: str) -> Document:
    return stores.admin_tokens.delete(token_id)


def list_admin_tokens(stores: Stores) -> list[Document]:
    return sorted(stores.admin_tokens.all(), key=lambda t: t["created_at"])


class AdminAuthority:
    """Decides whether a bearer token is an admin credential.

    Accepted: tokens in the store, the one from ``DROPSYNC_ADMIN_TOKEN`` (checked in memory,
    never stored), and this hub's local CLI token (published only in the 0600 lock file).
    """

    def __init__(self, stores: Stores, extra_tokens: dict[str, str]):
        self.stores = stores
        self._extra = {label: hash_token(token) for label, token in extra_tokens.items()}

    def identify(self, token: str | None) -> str:
        """The name of the admin credential ``token`` is, or raise Unauthorized."""
        if not token:
            raise Unauthorized("admin credentials required: send 'Authorization: Bearer "
                               "<admin token>'", code="missing_credentials")
        presented = hash_token(token)
        for label, expected in self._extra.items():
            if hmac.compare_digest(expected, presented):
                return label
        try:
            record = self.stores.admin_tokens.get_by("token_hash", presented)
        except NotFound:
            raise Unauthorized("invalid admin token", code="invalid_token") from None
        return f"token:{record['id']}"


# -- operators -------------------------------------------------------------------------
def check_password_policy(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValidationFailed(f"password must be at least {MIN_PASSWORD_LENGTH} characters",
                               {"password": ["too short"]})


def add_operator(stores: Stores, username: str, password: str) -> Document:
    check_password_policy(password)
    return stores.operators.insert({
        "username": username, "password_hash": generate_password_hash(password),
        "created_at": now_iso(),
    })


def list_operators(stores: Stores) -> list[Document]:
    return sorted(stores.operators.all(), key=lambda o: o["username"])


def set_operator_password(stores: Stores, username: str, password: str, *,
                          keep_session: str | None = None) -> Document:
    """Set a password and end the operator's dashboard sessions (all but ``keep_session``,
    the session id of an operator changing their own password)."""
    check_password_policy(password)
    operator = stores.operators.update(username, {
        "password_hash": generate_password_hash(password), "password_changed_at": now_iso(),
    })
    end_operator_sessions(stores, username, keep_session=keep_session)
    return operator


def remove_operator(stores: Stores, username: str) -> Document:
    """Revoke an operator: the account and its sessions go. The last one stays, or nobody
    could log in to the dashboard again."""
    stores.operators.get(username)  # 404 first
    if len(stores.operators) <= 1:
        raise Conflict("the last operator cannot be removed; add another first",
                       code="last_operator")
    operator = stores.operators.delete(username)
    end_operator_sessions(stores, username)
    return operator


@functools.cache
def unknown_user_hash() -> str:
    """Checked when the username is unknown, so a miss costs what a wrong password costs
    and response times do not tell which usernames exist. Made on first need: hashing
    takes a good fraction of a second, and start-up should not wait for it."""
    return generate_password_hash(secrets.token_urlsafe(16))


def verify_operator(stores: Stores, username: str, password: str) -> Document:
    try:
        operator = stores.operators.get(username)
    except NotFound:
        operator = None
    password_hash = operator["password_hash"] if operator else unknown_user_hash()
    if not check_password_hash(password_hash, password) or operator is None:
        raise Unauthorized("wrong username or password", code="invalid_login")
    return operator


# -- dashboard sessions ----------------------------------------------------------------
def start_session(stores: Stores, username: str, lifetime_s: float) -> str:
    """A new session for ``username``; the id goes in the browser's signed cookie, only
    its hash is stored. Expired sessions are swept on the way (logins are rare)."""
    now = time.time()
    stale = [s["id"] for s in stores.sessions.all() if s["expires"] <= now]
    if stale:
        stores.sessions.delete_many(stale)
    session_id = new_token()
    stores.sessions.insert({"id": hash_token(session_id), "username": username,
                            "created_at": now_iso(), "expires": now + lifetime_s})
    return session_id


def session_operator(stores: Stores, session_id: str | None) -> str | None:
    """The operator a session id belongs to, or None when it is unknown, ended or expired.
    A lookup in memory: every dashboard request pays for it."""
    if not session_id:
        return None
    try:
        record = stores.sessions.get(hash_token(session_id))
    except NotFound:
        return None
    return record["username"] if record["expires"] > time.time() else None


def end_session(stores: Stores, session_id: str | None) -> None:
    if session_id:
        key = hash_token(session_id)
        if key in stores.sessions:
            stores.sessions.delete(key)


def end_operator_sessions(stores: Stores, username: str, *,
                          keep_session: str | None = None) -> int:
    kept = hash_token(keep_session) if keep_session else None
    ended = [s["id"] for s in stores.sessions.all()
             if s["username"] == username and s["id"] != kept]
    if ended:
        stores.sessions.delete_many(ended)
    return len(ended)
