"""The review service's access rules without a server: passwords, roles, sessions and their life, CSRF."""

from __future__ import annotations

import pytest

from edge.config import ReviewConfig, parse_config
from edge.errors import ConfigError
from edge.review.auth import Access, allowed, csrf_ok, hash_password

HASH = hash_password("s3cret-enough")


def _access(clock: list[float]) -> Access:
    cfg = ReviewConfig.model_validate({"session_minutes": 1, "users": [
        {"name": "vic", "role": "viewer", "password_hash": HASH},
        {"name": "eve", "role": "reviewer", "password_hash": HASH},
        {"name": "sso", "role": "engineer"},
    ]})  # fmt: skip
    return Access(cfg, clock=lambda: clock[0])


def test_roles_are_ordered() -> None:
    assert allowed("engineer", "reviewer") and allowed("reviewer", "reviewer") and allowed("reviewer", "viewer")
    assert not allowed("viewer", "reviewer") and not allowed("reviewer", "engineer")


def test_a_login_needs_the_right_password_of_a_user_who_has_one() -> None:
    access = _access([0.0])
    assert access.check("eve", "s3cret-enough") == ("eve", "reviewer")
    assert access.check("eve", "wrong") is None
    assert access.check("mallory", "s3cret-enough") is None
    assert access.check("sso", "") is None  # no password: only through the trusted proxy header
    assert HASH.startswith("$argon2id$") and "s3cret" not in HASH


def test_sessions_expire_unless_used_and_end_at_logout() -> None:
    clock = [0.0]
    access = _access(clock)
    token, session = access.open("eve", "reviewer")
    clock[0] = 50.0
    assert access.session(token) == session.__class__("eve", "reviewer", session.csrf, 110.0)  # renewed by use
    clock[0] = 100.0
    assert access.session(token) is not None
    clock[0] = 200.0  # more than a minute without use
    assert access.session(token) is None and access.session("forged") is None and access.session(None) is None
    token, _ = access.open("eve", "reviewer")
    access.logout(token)
    assert access.session(token) is None


def test_state_changes_need_the_sessions_own_csrf_token() -> None:
    access = _access([0.0])
    _, mine = access.open("eve", "reviewer")
    _, theirs = access.open("vic", "viewer")
    assert csrf_ok(mine, mine.csrf)
    assert not csrf_ok(mine, theirs.csrf) and not csrf_ok(mine, None) and not csrf_ok(mine, "")


def test_a_trusted_proxy_names_only_configured_users_and_keeps_their_session() -> None:
    access = _access([0.0])
    first = access.trusted("sso", None)
    assert first is not None and first[1].role == "engineer"
    again = access.trusted("sso", first[0])
    assert again is not None and again[0] == first[0]  # the same session while the cookie holds it
    other = access.trusted("vic", first[0])
    assert other is not None and other[0] != first[0] and other[1].user == "vic"  # another user: another session
    assert access.trusted("mallory", None) is None


def test_review_users_are_unique_and_named_safely() -> None:
    base = {"tools": [{"id": "T"}], "recipes": {"R": {}}}
    with pytest.raises(ConfigError, match="duplicate name"):
        parse_config({**base, "review": {"users": [{"name": "a", "role": "viewer"}, {"name": "a", "role": "viewer"}]}})
    with pytest.raises(ConfigError, match=r"review\.users\.0\.role"):
        parse_config({**base, "review": {"users": [{"name": "a", "role": "admin"}]}})
    with pytest.raises(ConfigError, match=r"review\.users\.0\.name"):
        parse_config({**base, "review": {"users": [{"name": "a b", "role": "viewer"}]}})
