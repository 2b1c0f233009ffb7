"""Authentication of the admin API's mutating endpoints.

A bearer token from ``DRIFTSWITCH_ADMIN_TOKEN``, compared in constant time
(:func:`hmac.compare_digest`); without a configured token every mutating endpoint is disabled,
never open.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import SecretStr

__all__ = ["ADMIN_TOKEN_ENV", "AdminAuth", "AuthFailure"]

#: Environment variable holding the admin API's bearer token.
ADMIN_TOKEN_ENV = "DRIFTSWITCH_ADMIN_TOKEN"


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Why a mutating request is refused: HTTP status, machine-readable code and a message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True)
class AdminAuth:
    """The admin API's bearer token (``None``: mutating endpoints disabled, never open)."""

    token: SecretStr | None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> AdminAuth:
        """Read :data:`ADMIN_TOKEN_ENV` (an empty value counts as unset)."""
        raw = environ.get(ADMIN_TOKEN_ENV, "")
        return cls(SecretStr(raw) if raw else None)

    @property
    def enabled(self) -> bool:
        """Whether mutating requests can be authorised at all."""
        return self.token is not None

    def check(self, authorization: str | None) -> AuthFailure | None:
        """None if the ``Authorization`` header carries the token, else why not.

        No configured token → 503 ``admin_disabled``; no or malformed header → 401
        ``unauthenticated``; another token → 403 ``forbidden``. The comparison takes the same
        time wherever the tokens differ (:func:`hmac.compare_digest`).
        """
        if self.token is None:
            return AuthFailure(
                503,
                "admin_disabled",
                f"mutating endpoints are disabled: set {ADMIN_TOKEN_ENV} to enable them",
            )
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return AuthFailure(401, "unauthenticated", "send `Authorization: Bearer <token>`")
        expected = self.token.get_secret_value().encode()
        if not hmac.compare_digest(given.strip().encode(), expected):
            return AuthFailure(403, "forbidden", "the bearer token is not valid")
        return None
