"""Who is asking, and what they may do: users and roles from the config, argon2 password hashes (argon2-cffi),
sessions held in the service's memory (a random token in an HttpOnly, SameSite=Strict cookie) each with its own
CSRF token, which every state change must send back in the ``X-CSRF-Token`` header.

A trusted reverse proxy may name the user in a header instead (``review.trusted_user_header``): the name must be a
configured user, the role is that user's, and the session (with its CSRF token) is opened on the first request.
Roles are ordered: a viewer looks, a reviewer also decides review items, an engineer also steers calibration.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from edge.config import ReviewConfig

ROLES = ("viewer", "reviewer", "engineer")  # each may do what the ones before it may
_HASHER = PasswordHasher()
# a hash to verify against when the user is unknown, so a wrong name costs as long as a wrong password
_DUMMY = _HASHER.hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` for ``review.users[].password_hash``."""
    return _HASHER.hash(password)


def allowed(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


@dataclass(frozen=True)
class Session:
    user: str
    role: str
    csrf: str
    expires: float


SESSION: web.RequestKey[Session] = web.RequestKey("session")  # the checked session, on the request it came with


class Access:
    """The configured users, their logins and sessions."""

    def __init__(self, cfg: ReviewConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._users = {u.name: u for u in cfg.users}
        self._ttl = cfg.session_minutes * 60
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def check(self, name: str, password: str) -> tuple[str, str] | None:
        """(user, role) for a right name and password, None otherwise, in the same time either way (argon2: tens
        of milliseconds, so callers run it off the event loop)."""
        user = self._users.get(name)
        stored = user.password_hash if user is not None and user.password_hash else _DUMMY
        try:
            _HASHER.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        if user is None or not user.password_hash:
            return None
        return user.name, user.role

    def open(self, user: str, role: str) -> tuple[str, Session]:
        """A new session (its token, the session) for a user who proved who they are."""
        now = self._clock()
        for token in [t for t, s in self._sessions.items() if s.expires < now]:
            del self._sessions[token]
        token = secrets.token_urlsafe(32)
        session = Session(user, role, secrets.token_urlsafe(32), now + self._ttl)
        self._sessions[token] = session
        return token, session

    def trusted(self, name: str, token: str | None) -> tuple[str, Session] | None:
        """The session of a user a trusted proxy named: the one ``token`` holds when it is that user's, else a new
        one (its CSRF token guards state changes as after a login); None for a name not configured."""
        user = self._users.get(name)
        if user is None:
            return None
        current = self.session(token)
        if current is not None and current.user == user.name and token:
            return token, current
        return self.open(user.name, user.role)

    def session(self, token: str | None) -> Session | None:
        """The live session of ``token`` (its life starts again), None when there is none."""
        found = self._sessions.get(token) if token else None
        now = self._clock()
        if found is None or found.expires < now:
            if token:
                self._sessions.pop(token, None)
            return None
        renewed = Session(found.user, found.role, found.csrf, now + self._ttl)
        self._sessions[token] = renewed  # type: ignore[index]
        return renewed

    def logout(self, token: str | None) -> None:
        if token:
            self._sessions.pop(token, None)


def csrf_ok(session: Session, sent: str | None) -> bool:
    """A state change carries its session's CSRF token."""
    return sent is not None and secrets.compare_digest(session.csrf, sent)
