"""JSON Web Tokens as the loopback clouds handle them: verified the way AWS STS, Entra ID and
Google STS verify a Kubernetes ServiceAccount token, and signed the way an issuer signs.

A cloud that trusts a cluster knows the cluster's issuer URL. It reads
`{issuer}/.well-known/openid-configuration` for `jwks_uri` (OpenID Connect Discovery 1.0,
section 4), fetches that JSON Web Key Set (RFC 7517), and accepts a token only when its RS256
signature (RFC 7515, RFC 7518 section 3.3) verifies with the key its `kid` names, its `iss`
is that issuer, its `aud` holds the audience the cloud expects, and it has not expired
(RFC 7519 section 4.1). The subject (`sub`: `system:serviceaccount:NS:NAME`) is then the
cloud's trust policy's business. Kubernetes serves both documents when the API server has
--service-account-issuer and its key files (the "Service account issuer discovery" page).

`Issuer` is the other side: an RSA key that signs tokens and serves its own discovery
documents, for the fake Entra ID's access tokens and for tests without an API server.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

LEEWAY = 60  # seconds of clock skew the clouds allow on exp and nbf


class TokenInvalid(Exception):
    """Why a cloud refuses a token: `what` is one of signature, issuer, audience, expired,
    malformed (each cloud words it in its own dialect)."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int(text: str) -> int:
    return int.from_bytes(unb64url(text), "big")


def _uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes, bytes]:
    """header, claims, signed input, signature; TokenInvalid('malformed') otherwise."""
    try:
        head, body, sig = token.split(".")
        header = json.loads(unb64url(head))
        claims = json.loads(unb64url(body))
        signature = unb64url(sig)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TokenInvalid("malformed", f"not a JWS compact serialization ({exc})") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenInvalid("malformed", "header or claims are not JSON objects")
    return header, claims, f"{head}.{body}".encode(), signature


def verify_rs256(token: str, jwks: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a token whose RS256 signature one of `jwks`'s keys verifies."""
    header, claims, signed, signature = parts(token)
    if header.get("alg") != "RS256":
        raise TokenInvalid("signature", f"alg {header.get('alg')!r} is not RS256")
    keys = [k for k in jwks.get("keys") or [] if k.get("kty") == "RSA"]
    if header.get("kid") is not None:
        keys = [k for k in keys if k.get("kid") == header["kid"]]
    for jwk in keys:
        public = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
        try:
            public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            continue
        return header, claims
    raise TokenInvalid("signature", f"no key of the issuer's JWKS verifies kid {header.get('kid')}")


def check_claims(claims: dict[str, Any], *, issuer: str, audiences: set[str]) -> None:
    """iss, aud and the validity window, as RFC 7519 defines them."""
    if claims.get("iss") != issuer:
        raise TokenInvalid("issuer", f"iss {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    given = set(aud) if isinstance(aud, list) else {aud}
    if not given & audiences:
        raise TokenInvalid("audience", f"aud {sorted(map(str, given))} is not {sorted(audiences)}")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + LEEWAY < now:
        raise TokenInvalid("expired", f"exp {exp} is past")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - LEEWAY > now:
        raise TokenInvalid("expired", f"nbf {nbf} is in the future")


@dataclass
class TrustedIssuer:
    """A cluster's issuer as a cloud knows it: the URL, and how to reach its documents (the
    loopback API server's CA). Keys are fetched on first use and again for an unknown kid,
    as the clouds cache them."""

    url: str
    ssl_context: ssl.SSLContext | None = None
    _jwks: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    fetches: int = 0  # JWKS fetches, for tests

    def _get(self, url: str) -> dict[str, Any]:
        # The API server serves its JWKS as application/jwk-set+json and refuses other types.
        accept = "application/json, application/jwk-set+json"
        request = urllib.request.Request(url, headers={"Accept": accept})
        with urllib.request.urlopen(request, timeout=10, context=self.ssl_context) as answer:
            body: dict[str, Any] = json.loads(answer.read())
        return body

    def jwks(self, refresh: bool = False) -> dict[str, Any]:
        with self._lock:
            if self._jwks is None or refresh:
                discovery = self._get(self.url.rstrip("/") + "/.well-known/openid-configuration")
                if discovery.get("issuer") != self.url:
                    raise TokenInvalid("issuer", "the discovery document names another issuer")
                self._jwks = self._get(discovery["jwks_uri"])
                self.fetches += 1
            return self._jwks

    def verify(self, token: str, audiences: set[str]) -> dict[str, Any]:
        """The claims of a token this issuer signed for one of `audiences`."""
        header, _, _, _ = parts(token)
        known = {k.get("kid") for k in self.jwks().get("keys") or []}
        jwks = self.jwks(refresh=header.get("kid") not in known)
        _, claims = verify_rs256(token, jwks)
        check_claims(claims, issuer=self.url, audiences=audiences)
        return claims


def verify_with(
    issuers: dict[str, TrustedIssuer], token: str, audiences: set[str]
) -> dict[str, Any]:
    """Verify against the trusted issuer the token names (unverified `iss` picks the keys,
    as the clouds look up their OIDC provider by it)."""
    _, claims, _, _ = parts(token)
    issuer = issuers.get(str(claims.get("iss")))
    if issuer is None:
        raise TokenInvalid("issuer", f"no trusted issuer {claims.get('iss')!r}")
    return issuer.verify(token, audiences)


class Issuer:
    """An RSA signing key with its discovery documents: the fake Entra ID's access tokens,
    and a stand-in for a cluster's issuer where a test has no API server."""

    def __init__(self, url: str = "", kid: str = "loopback-key-1") -> None:
        self.url = url
        self.kid = kid
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def sign(self, claims: dict[str, Any], *, kid: str | None = None) -> str:
        header = {"alg": "RS256", "typ": "JWT", "kid": kid or self.kid}
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url(signature)}"

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        key = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid}
        return {"keys": [{**key, "n": _uint(numbers.n), "e": _uint(numbers.e)}]}

    def service_account_token(
        self, namespace: str, name: str, audience: str, *, seconds: int = 600
    ) -> str:
        """A token shaped as the API server's TokenRequest mints it (its claims)."""
        now = int(time.time())
        return self.sign(
            {
                "aud": [audience],
                "exp": now + seconds,
                "iat": now,
                "nbf": now,
                "iss": self.url,
                "sub": f"system:serviceaccount:{namespace}:{name}",
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": name, "uid": "00000000-0000-4000-8000-000000000001"},
                },
            }
        )

    def app(self) -> Starlette:
        """Serves its discovery document and JWKS, as a cluster's issuer does."""

        async def discovery(_: Request) -> JSONResponse:
            return JSONResponse(
                {
                    "issuer": self.url,
                    "jwks_uri": f"{self.url}/openid/v1/jwks",
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                }
            )

        async def jwks(_: Request) -> JSONResponse:
            return JSONResponse(self.jwks())

        return Starlette(
            routes=[
                Route("/.well-known/openid-configuration", discovery),
                Route("/openid/v1/jwks", jwks),
            ]
        )
