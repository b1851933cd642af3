"""Access tokens (JWT, HS256) and refresh tokens (opaque, stored as SHA-256).

HS256: the same deployment issues and verifies every token, nobody else needs to verify them, and a
symmetric key is one secret to provision (EMMA_JWT_SIGNING_KEY); RS256/EdDSA would only pay off when
third parties verify tokens without being able to mint them. Verification pins the algorithm, the
issuer and the audience, and requires exp, iat, sub and sid.

A verified token's claims are kept until the token expires (VerifiedTokens): decoding and checking a
JWT took about 50 µs of every call, and a client sends the same token for its whole life. What the
cache holds is only the signature check's result, which cannot change before `exp`; whether the
session is still good is asked on every call (services/identity/state.py: sessions, dropped by the
revocation NOTIFY), and forget_session drops a revoked session's tokens as well.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass

import grpc
import jwt
from emma.common.v1 import errors_pb2

from services.errors import ApiError, invalid_field

ISSUER = "emma"
AUDIENCE = "emma-api"
ALGORITHM = "HS256"
REFRESH_PREFIX = "emma_rt_"
LEEWAY_S = 5


@dataclass(frozen=True)
class AccessClaims:
    user_id: str
    session_id: str
    token_id: str
    expires: dt.datetime


def token_invalid(message: str = "the access token is not valid") -> ApiError:
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, errors_pb2.ERROR_REASON_TOKEN_INVALID, message)


def sign_access_token(key: bytes, user_id: str, session_id: str, expires: dt.datetime) -> str:
    now = dt.datetime.now(dt.UTC)
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user_id,
        "sid": session_id,
        "jti": uuid.uuid4().hex,
        "iat": int(now.timestamp()),
        "exp": int(expires.timestamp()),
    }
    return jwt.encode(claims, key, algorithm=ALGORITHM)


MAX_CACHED_TOKENS = 20_000


class VerifiedTokens:
    """Claims of tokens that passed verification, by (verification keys, token), until they expire.

    Only successes are kept (a bad token is decoded again, and refused again, every time). Past its
    `exp` an entry is never used: the token then goes through jwt.decode, whose leeway and
    TOKEN_EXPIRED answer stay what they were. Bounded: when full, expired entries go, and if that is
    not enough, all of them (each costs one decode to come back).
    """

    def __init__(self, limit: int = MAX_CACHED_TOKENS) -> None:
        self.limit = limit
        self._claims: dict[tuple[tuple[bytes, ...], str], tuple[AccessClaims, float]] = {}

    def get(self, keys: tuple[bytes, ...], token: str) -> AccessClaims | None:
        entry = self._claims.get((keys, token))
        if entry is None:
            return None
        if time.time() >= entry[1]:
            del self._claims[(keys, token)]
            return None
        return entry[0]

    def put(self, keys: tuple[bytes, ...], token: str, claims: AccessClaims) -> None:
        if len(self._claims) >= self.limit:
            now = time.time()
            for key in [k for k, (_, exp) in self._claims.items() if exp <= now]:
                del self._claims[key]
            if len(self._claims) >= self.limit:
                self._claims.clear()
        self._claims[(keys, token)] = (claims, claims.expires.timestamp())

    def forget_session(self, session_id: str) -> None:
        """Drop the tokens of a session (revoked): they are checked from scratch if they come again."""
        for key in [k for k, (c, _) in self._claims.items() if c.session_id == session_id]:
            del self._claims[key]

    def clear(self) -> None:
        self._claims.clear()

    def __len__(self) -> int:
        return len(self._claims)


# One per process: the result of verifying a token with given keys is the same for every AuthState.
verified_tokens = VerifiedTokens()


def verify_access_token(keys: tuple[bytes, ...], token: str) -> AccessClaims:
    """The claims of a valid token; UNAUTHENTICATED with TOKEN_INVALID or TOKEN_EXPIRED otherwise."""
    claims = verified_tokens.get(keys, token)
    if claims is None:
        claims = _decode_access_token(keys, token)
        verified_tokens.put(keys, token, claims)
    return claims


def _decode_access_token(keys: tuple[bytes, ...], token: str) -> AccessClaims:
    last: Exception | None = None
    for key in keys:
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "sid", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise ApiError(
                grpc.StatusCode.UNAUTHENTICATED,
                errors_pb2.ERROR_REASON_TOKEN_EXPIRED,
                "the access token has expired; use RefreshToken",
            ) from None
        except jwt.InvalidSignatureError as exc:  # try the previous keys of a rotation
            last = exc
            continue
        except jwt.PyJWTError:
            raise token_invalid() from None
        if not isinstance(claims.get("sub"), str) or not isinstance(claims.get("sid"), str):
            raise token_invalid()
        return AccessClaims(
            user_id=claims["sub"],
            session_id=claims["sid"],
            token_id=str(claims.get("jti", "")),
            expires=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
        )
    del last
    raise token_invalid()


def new_refresh_token(session_id: str) -> tuple[str, bytes]:
    """(token, its SHA-256). The token names its session so lookups need no scan."""
    token = f"{REFRESH_PREFIX}{session_id}_{secrets.token_urlsafe(32)}"
    return token, hashlib.sha256(token.encode()).digest()


def parse_refresh_token(token: str) -> tuple[str, bytes] | None:
    """(session id, SHA-256 of the token), or None when it is not shaped like a refresh token."""
    if not token.startswith(REFRESH_PREFIX):
        return None
    rest = token[len(REFRESH_PREFIX) :]
    session_id, sep, secret = rest.partition("_")
    if not sep or not session_id or len(secret) < 32 or len(token) > 200:
        return None
    return session_id, hashlib.sha256(token.encode()).digest()


# Invitations to an organization (SetMembership for a user who is not a member). They are signed, not
# stored: the token names the user, the organization, the role and the admin who issued it, and the
# version (update_time) of the user's row when it was issued. Accepting one bumps that version, so a
# token works once; any other change of the account voids it too.
INVITATION_AUDIENCE = "emma-invitation"  # never accepted where an access token is expected, nor the reverse
INVITATION_PREFIX = "emma_inv_"


@dataclass(frozen=True)
class Invitation:
    user_id: str
    org: str
    role: int
    inviter: str
    version: str
    expires: dt.datetime


def sign_invitation(key: bytes, invitation: Invitation) -> str:
    claims = {
        "iss": ISSUER,
        "aud": INVITATION_AUDIENCE,
        "sub": invitation.user_id,
        "org": invitation.org,
        "role": invitation.role,
        "by": invitation.inviter,
        "ver": invitation.version,
        "jti": uuid.uuid4().hex,
        "iat": int(dt.datetime.now(dt.UTC).timestamp()),
        "exp": int(invitation.expires.timestamp()),
    }
    return INVITATION_PREFIX + jwt.encode(claims, key, algorithm=ALGORITHM)


def verify_invitation(keys: tuple[bytes, ...], token: str) -> Invitation:
    """The invitation a token carries; FIELD_INVALID when it is not one of ours, STATE_CONFLICT when
    it has expired."""
    bad = invalid_field("invitation_token", "not an invitation token of this deployment")
    if not token.startswith(INVITATION_PREFIX) or len(token) > 2000:
        raise bad
    for key in keys:
        try:
            claims = jwt.decode(
                token[len(INVITATION_PREFIX) :],
                key,
                algorithms=[ALGORITHM],
                audience=INVITATION_AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "org", "role", "by", "ver"]},
            )
        except jwt.ExpiredSignatureError:
            raise invitation_void("this invitation has expired; ask for a new one") from None
        except jwt.InvalidSignatureError:  # try the previous keys of a rotation
            continue
        except jwt.PyJWTError:
            raise bad from None
        fields = (claims["sub"], claims["org"], claims["by"], claims["ver"])
        if not all(isinstance(f, str) for f in fields) or not isinstance(claims["role"], int):
            raise bad
        return Invitation(
            user_id=claims["sub"],
            org=claims["org"],
            role=claims["role"],
            inviter=claims["by"],
            version=claims["ver"],
            expires=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
        )
    raise bad


def invitation_void(message: str = "this invitation is no longer valid; ask for a new one") -> ApiError:
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_STATE_CONFLICT, message)
