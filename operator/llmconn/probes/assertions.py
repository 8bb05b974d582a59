"""Signed JWT assertions (RFC 7523) for the token services that take one: a spec.oauth
client's `private_key_jwt` (`probes.oauth_client`) and a Google service-account key
(`probes.google_oauth`). One signer, so both bound a tenant's key the same way.

The key is bounded before any work on it: the PEM's length first, then an RSA modulus, read
by a load that skips OpenSSL's key check (the check of a 16384-bit key runs for a minute
holding the interpreter's lock, so a thread would not spare the event loop; of a 4096-bit key,
half a second). An RSA key's consistency is proved instead by verifying the signature with its
public half, which costs a fraction of a millisecond.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from llmconn.model.limits import MAX_PRIVATE_KEY_PEM_BYTES, MAX_RSA_BITS, too_large
from llmconn.model.reasons import Reason
from llmconn.probes.base import ProbeFailure, ProbeOutcome


def sign(
    pem: str,
    claims: Mapping[str, Any],
    algorithm: str,
    *,
    key_id: str | None,
    field: str,
    not_a_key: ProbeOutcome,
    pem_why: str = " of PEM",
    bits_why: str = "",
) -> str:
    """The JWT of `claims` signed with the private key in `pem` by `algorithm` (RS256, PS256:
    an RSA key; ES256: an EC key), `key_id` its "kid". Raises ProbeFailure: InvalidConfiguration
    naming `field` when the key is too large, and `not_a_key` when it is not such a key in
    unencrypted PEM (or its parts do not make one key)."""
    import jwt  # signs only here
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    data = pem.encode()
    if len(data) > MAX_PRIVATE_KEY_PEM_BYTES:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                too_large(field, len(data), MAX_PRIVATE_KEY_PEM_BYTES, why=pem_why),
            )
        )
    try:
        key = load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    wanted = ec.EllipticCurvePrivateKey if algorithm == "ES256" else rsa.RSAPrivateKey
    if not isinstance(key, wanted):
        raise ProbeFailure(not_a_key)
    if isinstance(key, rsa.RSAPrivateKey) and key.key_size > MAX_RSA_BITS:
        raise ProbeFailure(
            ProbeOutcome(
                Reason.INVALID_CONFIGURATION,
                too_large(field, key.key_size, MAX_RSA_BITS, "bits", why=bits_why),
            )
        )
    headers = {"kid": key_id} if key_id else None
    try:
        assertion = jwt.encode(dict(claims), key, algorithm=algorithm, headers=headers)
        if isinstance(key, rsa.RSAPrivateKey):
            signed, _, signature = assertion.rpartition(".")
            pad = (
                padding.PSS(
                    mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size
                )
                if algorithm.startswith("PS")
                else padding.PKCS1v15()
            )
            key.public_key().verify(
                base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
                signed.encode(),
                pad,
                hashes.SHA256(),
            )
    except (ValueError, TypeError, InvalidSignature):  # its parts do not make one key
        raise ProbeFailure(not_a_key) from None
    return assertion
