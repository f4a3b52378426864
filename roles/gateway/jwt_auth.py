"""JSON Web Tokens as bearer credentials, verified in memory with PyJWT.

`[gateway]` names how tokens are signed; any of them may be set, and a token is checked against
the one its `alg` header calls for:

    jwt_secret_file      HS256: a file holding the shared secret (whitespace around it is ignored)
    jwt_public_key_file  RS256: a PEM public key
    jwt_jwks_file        RS256: a JWKS document ({"keys": [...]}); the token's `kid` picks the key.
                         The file is read again when it changes, so a rotation needs no restart.
    jwt_issuer, jwt_audience   when set, the `iss` / `aud` a token must carry
    jwt_leeway           clock skew allowed on `exp` and `nbf`

Claims: `sub` (required; the caller's name is `jwt:<sub>`, which its usage is counted under),
`exp` (required), `scope` (space-separated or a list; default "inference"), `models` (globs;
default ["*"]), optional `priority`, and optional limits with the API-key file's names and meaning:
`requests_per_minute`, `tokens_per_minute`, `max_concurrent_requests`, `tokens_per_day`,
`tokens_per_month` (positive integers; held per `sub` by every gateway together, through Redis).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cynode.api_keys import LIMIT_FIELDS, SCOPES, ApiKey
from cynode.errors import AuthError, ConfigError

__all__ = ["JwtVerifier"]

JWKS_CHECK_S = 1.0  # how often the JWKS file's modification time is looked at


def _invalid(reason: str) -> AuthError:
    return AuthError(f"Invalid token: {reason}.", status=401, code="invalid_token")


class JwtVerifier:
    def __init__(self, *, secret: bytes | None = None, public_key=None, jwks_file: Path | None = None,
                 issuer: str = "", audience: str = "", leeway: float = 30.0) -> None:
        self._secret = secret
        self._public_key = public_key
        self._jwks_file = jwks_file
        self._jwks: dict[str, jwt.PyJWK] = {}
        self._jwks_stamp: tuple[int, int] | None = None
        self._jwks_checked = 0.0
        self._issuer = issuer or None
        self._audience = audience or None
        self._leeway = leeway
        if jwks_file is not None:
            self._load_jwks(strict=True)

    @classmethod
    def from_config(cls, config) -> JwtVerifier | None:
        """The verifier `[gateway]` asks for, or None when it configures no JWT; ConfigError naming the field."""
        if not (config.jwt_secret_file or config.jwt_public_key_file or config.jwt_jwks_file):
            return None
        secret = public_key = None
        if config.jwt_secret_file:
            secret = _read(config.jwt_secret_file, "jwt_secret_file").strip()
            if len(secret) < 32:
                raise ConfigError("[gateway] jwt_secret_file", [f"{config.jwt_secret_file}: the secret has {len(secret)} "
                                                                "bytes; HS256 needs at least 32"])
        if config.jwt_public_key_file:
            pem = _read(config.jwt_public_key_file, "jwt_public_key_file")
            try:
                public_key = serialization.load_pem_public_key(pem)
                if not isinstance(public_key, rsa.RSAPublicKey):
                    raise ValueError(f"it holds a {type(public_key).__name__}")
            except (ValueError, TypeError) as exc:
                raise ConfigError("[gateway] jwt_public_key_file",
                                  [f"{config.jwt_public_key_file}: not a PEM RSA public key ({exc})"]) from None
        return cls(secret=secret, public_key=public_key, jwks_file=config.jwt_jwks_file, issuer=config.jwt_issuer,
                   audience=config.jwt_audience, leeway=config.jwt_leeway)

    @staticmethod
    def looks_like(token: str) -> bool:
        return token.startswith("eyJ") and token.count(".") == 2

    def _load_jwks(self, *, strict: bool = False) -> None:
        path = self._jwks_file
        try:
            stat = os.stat(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._jwks_stamp:
                return
            keys = {}
            for entry in json.loads(Path(path).read_text())["keys"]:
                key = jwt.PyJWK(entry)
                keys[entry.get("kid", "")] = key
        except (OSError, ValueError, KeyError, TypeError, jwt.PyJWKError, jwt.InvalidKeyError) as exc:
            if strict:
                raise ConfigError("[gateway] jwt_jwks_file", [f"{path}: not a readable JWKS document ({exc})"]) from None
            return  # keep the keys we have; a half-written file is read again on the next check
        self._jwks, self._jwks_stamp = keys, stamp

    def _key_for(self, header: dict):
        alg = header.get("alg")
        if alg == "HS256" and self._secret is not None:
            return self._secret
        if alg == "RS256":
            if self._jwks_file is not None:
                now = time.monotonic()
                if now - self._jwks_checked >= JWKS_CHECK_S:
                    self._jwks_checked = now
                    self._load_jwks()
                kid = header.get("kid", "")
                if kid in self._jwks:
                    return self._jwks[kid].key
                if self._public_key is None:
                    raise _invalid(f"no key with kid {str(kid)[:40]!r} in the JWKS")
            if self._public_key is not None:
                return self._public_key
        raise _invalid(f"tokens signed with {str(alg)[:16]!r} are not accepted here")

    def verify(self, token: str) -> ApiKey:
        """The caller a valid token names; AuthError (401) for anything else."""
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, self._key_for(header), algorithms=[header.get("alg")], issuer=self._issuer,
                                audience=self._audience, leeway=self._leeway,
                                options={"require": ["exp", "sub"], "verify_aud": self._audience is not None})
        except jwt.ExpiredSignatureError:
            raise AuthError("The token has expired; get a new one.", status=401, code="expired_token") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the {exc.claim!r} claim is required") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(str(exc).rstrip(".") or "it does not verify") from None
        return _identity(claims, self._leeway)


def _identity(claims: dict, leeway: float) -> ApiKey:
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise _invalid("sub must be a non-empty string")
    scope = claims.get("scope", "inference")
    scopes = scope.split() if isinstance(scope, str) else scope
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise _invalid("scope must be a space-separated string or a list of strings")
    models = claims.get("models", ["*"])
    if not isinstance(models, list) or not models or not all(isinstance(m, str) and m for m in models):
        raise _invalid("models must be a non-empty list of strings")
    priority = claims.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)):
        raise _invalid("priority must be an integer")
    limits = {}
    for field in LIMIT_FIELDS:
        value = claims.get(field)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _invalid(f"{field} must be a positive integer")
            limits[field] = value
    return ApiKey(name=f"jwt:{sub[:128]}", scopes=frozenset(s for s in scopes if s in SCOPES), models=tuple(models),
                  priority=priority, expires_at=float(claims["exp"]) + leeway, source="jwt", **limits)


def _read(path: Path, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"[gateway] {field}", [f"{path}: {exc.strerror or exc}"]) from None
