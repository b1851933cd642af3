"""Access tokens: the cache of verified tokens answers exactly what verifying again would.

Revocation with a cached token is proven end to end in test_login.py
(test_revocation_reaches_another_replica_within_a_second: the token is used, so cached, on replica B
before its session is revoked on A, and B refuses it within a second).
"""

from __future__ import annotations

import datetime as dt

import grpc
import pytest

from services.errors import ApiError
from services.identity.tokens import VerifiedTokens, sign_access_token, verified_tokens, verify_access_token

KEY = b"k" * 32
OTHER = b"o" * 32


def _later(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)


def _refused(keys: tuple[bytes, ...], token: str) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(ApiError) as info:
        verify_access_token(keys, token)
    return info.value.code, info.value.reason


def test_a_verified_token_is_answered_from_the_cache_with_the_same_claims() -> None:
    token = sign_access_token(KEY, "u1", "s1", _later(600))
    first = verify_access_token((KEY,), token)
    assert verified_tokens.get((KEY,), token) == first
    assert verify_access_token((KEY,), token) == first
    assert (first.user_id, first.session_id) == ("u1", "s1")


def test_the_cache_never_answers_for_other_keys_nor_for_a_bad_token() -> None:
    token = sign_access_token(KEY, "u1", "s2", _later(600))
    verify_access_token((KEY,), token)
    # The same token checked against a deployment that no longer holds its key is refused.
    assert _refused((OTHER,), token) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID")
    # A rotation that keeps the old key as a verify key still accepts it.
    assert verify_access_token((OTHER, KEY), token).session_id == "s2"
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    assert _refused((KEY,), tampered)[1] == "TOKEN_INVALID"
    assert verified_tokens.get((KEY,), tampered) is None


def test_an_expired_token_is_refused_as_before_and_an_entry_ends_at_exp() -> None:
    old = sign_access_token(KEY, "u1", "s3", _later(-60))
    assert _refused((KEY,), old) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED")
    assert verified_tokens.get((KEY,), old) is None
    # Within jwt's leeway a token still verifies, but the cache never keeps it past its exp.
    recent = sign_access_token(KEY, "u1", "s3", _later(-1))
    assert verify_access_token((KEY,), recent).session_id == "s3"
    assert verified_tokens.get((KEY,), recent) is None


def test_forget_session_drops_its_tokens_only() -> None:
    cache = VerifiedTokens()
    a = sign_access_token(KEY, "u1", "sa", _later(600))
    b = sign_access_token(KEY, "u1", "sb", _later(600))
    cache.put((KEY,), a, verify_access_token((KEY,), a))
    cache.put((KEY,), b, verify_access_token((KEY,), b))
    cache.forget_session("sa")
    assert cache.get((KEY,), a) is None
    assert cache.get((KEY,), b) is not None


def test_the_cache_is_bounded() -> None:
    cache = VerifiedTokens(limit=3)
    issued = [sign_access_token(KEY, "u", f"s{i}", _later(600)) for i in range(5)]
    for token in issued:
        cache.put((KEY,), token, verify_access_token((KEY,), token))
        assert len(cache) <= 3
    assert cache.get((KEY,), issued[-1]) is not None
