"""Passwords (argon2id), API tokens, CSRF tokens and the failed-login limit.

The login limit lives in the database (``login_failures``), so every worker process and every
restart sees the same counts: ``max_failures_account`` failures for one username or
``max_failures_address`` for one client address within ``login_window_s`` lock that key until
the window ends (the caller answers 429 with ``Retry-After``).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import LoginFailure

_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters (RFC 9106 low-memory)
# verified against when the username does not exist, so a wrong name costs as long as a wrong password
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash (salt and parameters inside the string)."""
    return _HASHER.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; a missing user (None) is verified against a dummy hash."""
    try:
        return _HASHER.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def new_token() -> tuple[str, str]:
    """(a bearer token to hand out once, its SHA-256 to store)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_csrf() -> str:
    return secrets.token_urlsafe(32)


def csrf_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; False when either side is missing."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


# --------------------------------------------------------------------------- failed-login limit

@dataclass(frozen=True)
class Locked:
    """A key that may not try again before ``until`` (epoch seconds)."""

    key: str
    until: float

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait (at least 1)."""
        return max(1, math.ceil(self.until - time.time()))

    def message(self) -> str:
        when = time.strftime("%H:%M:%S UTC", time.gmtime(self.until))
        what = "this account" if self.key.startswith("account:") else "your address"
        minutes = math.ceil(self.retry_after / 60)
        return (f"Too many failed logins for {what}. Try again after {when} "
                f"(in {self.retry_after} s, about {minutes} minute{'s' if minutes != 1 else ''}).")


def limit_keys(username: str, address: str) -> list[str]:
    return [f"account:{username.strip().lower()}"[:200], f"address:{address}"[:200]]


def check_locked(db: Session, keys: list[str], limits: list[int], window_s: float,
                 now: float | None = None) -> Locked | None:
    """The first key over its limit within the current window, else None."""
    now = time.time() if now is None else now
    rows = {r.key: r for r in db.scalars(select(LoginFailure).where(LoginFailure.key.in_(keys)))}
    for key, limit in zip(keys, limits):
        r = rows.get(key)
        if r is not None and now - r.window_start < window_s and r.failures >= limit:
            return Locked(key, r.window_start + window_s)
    return None


def record_failure(db: Session, keys: list[str], window_s: float, now: float | None = None) -> None:
    """Count one failed login against each key: one atomic UPDATE (a new window when the old one ended),
    or an INSERT for a first failure (a concurrent INSERT of the same key retries the UPDATE)."""
    now = time.time() if now is None else now
    for key in keys:
        for _ in range(3):
            res = db.execute(update(LoginFailure).where(LoginFailure.key == key,
                                                         LoginFailure.window_start > now - window_s)
                             .values(failures=LoginFailure.failures + 1))
            if res.rowcount:
                break
            res = db.execute(update(LoginFailure).where(LoginFailure.key == key)
                             .values(failures=1, window_start=now))  # the old window ended: start a new one
            if res.rowcount:
                break
            try:
                with db.begin_nested():
                    db.add(LoginFailure(key=key, window_start=now, failures=1))
                break
            except IntegrityError:
                continue
    db.commit()


def clear_failures(db: Session, key: str) -> None:
    """Forget an account's failures after a successful login (an address's count stays)."""
    db.execute(delete(LoginFailure).where(LoginFailure.key == key))
    db.commit()
