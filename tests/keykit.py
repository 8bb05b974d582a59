"""Key material for tests, made here once: PEM keys of any size without the minutes a real
large key takes, and self-signed CA certificates for trust bundles."""

from __future__ import annotations

import base64
import datetime as dt
import secrets

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def _der_int(value: int) -> bytes:
    raw = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return b"\x02" + _der_length(len(raw)) + raw


def rsa_pem(bits: int) -> str:
    """An RSAPrivateKey (PKCS #1) with a `bits`-bit modulus, in PEM: well-formed DER whose
    numbers make no key (generating a real 16384-bit key takes minutes). Its size is that
    of a real key of that size."""

    def odd(k: int) -> int:
        return secrets.randbits(k) | (1 << (k - 1)) | 1

    numbers = [0, odd(bits), 65537, odd(bits) - 2, *(odd(bits // 2) for _ in range(5))]
    body = b"".join(_der_int(n) for n in numbers)
    text = base64.b64encode(b"\x30" + _der_length(len(body)) + body).decode()
    lines = [text[i : i + 64] for i in range(0, len(text), 64)]
    return (
        "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END RSA PRIVATE KEY-----\n"
    )


def ca_pem(name: str = "tenant CA") -> bytes:
    """A self-signed CA certificate (EC P-256), valid for a day, in PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)
