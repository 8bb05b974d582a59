"""Credentials a probe presents besides a plain API key: what a Secret holding cloud keys, or a
workload identity exchanged at a cloud's token service, yields.

Plain values, no I/O. Their repr never shows a secret part, and `secrets()` lists every value
the redacting log filter must hide while a validation holds them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmconn.model.limits import MAX_JSON_DEPTH, json_depth


@dataclass(frozen=True, repr=False)
class AwsCredentials:
    """AWS access keys for SigV4: long-lived from a Secret, or temporary from STS."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        return f"AwsCredentials(access_key_id={self.access_key_id[:4]}…)"

    def secrets(self) -> tuple[str, ...]:
        return tuple(
            v for v in (self.access_key_id, self.secret_access_key, self.session_token) if v
        )


@dataclass(frozen=True, repr=False)
class BearerToken:
    """An OAuth access token (Entra ID, Google): sent as `Authorization: Bearer`."""

    token: str
    expires_at: float | None = None  # epoch seconds, when the issuer says

    def __repr__(self) -> str:
        return "BearerToken(…)"

    def secrets(self) -> tuple[str, ...]:
        return (self.token,)


@dataclass(frozen=True, repr=False)
class OAuthClientSecrets:
    """What spec.oauth reads from its Secret: a client id and secret (clientCredentials), or
    a private key in PEM (privateKeyJWT). The client id is no secret: messages name it."""

    client_id: str | None = None
    client_secret: str | None = None
    private_key: str | None = None

    def __repr__(self) -> str:
        return f"OAuthClientSecrets(client_id={self.client_id!r})"

    def secrets(self) -> tuple[str, ...]:
        """The client secret; the private key whole and its base64 lines (as for a
        service-account key: a text may hold one line of it)."""
        found = [self.client_secret] if self.client_secret else []
        if self.private_key:
            lines = [line.strip() for line in self.private_key.splitlines()]
            lines = [line for line in lines if len(line) >= 16 and not line.startswith("-----")]
            found += [self.private_key, "".join(lines), *lines]
        return tuple(v for v in found if v)


@dataclass(frozen=True, repr=False)
class ServiceAccountKey:
    """A Google Cloud service-account key file (JSON, `"type": "service_account"`): the
    fields that sign a JWT and say where to exchange it for an access token."""

    client_email: str
    private_key: str  # PEM
    private_key_id: str
    token_uri: str
    project_id: str | None = None

    def __repr__(self) -> str:
        return f"ServiceAccountKey(client_email={self.client_email})"

    def secrets(self) -> tuple[str, ...]:
        """The private key's base64 body, whole and line by line (a text may hold one line
        of it, unescaped), and the key's id. Not the PEM armour: "PRIVATE KEY" is no secret,
        and lines too short to be told from ordinary words are left to the whole body."""
        lines = [line.strip() for line in self.private_key.splitlines()]
        lines = [line for line in lines if len(line) >= 16 and not line.startswith("-----")]
        return ("".join(lines), *lines, self.private_key_id)


def service_account_key(text: str) -> ServiceAccountKey | None:
    """The key file in `text`, or None when `text` is not JSON at all (an API key). Raises
    ValueError, naming the field, for JSON that is not a usable service-account key; the
    message never holds a value from the file."""
    if not text.lstrip().startswith("{"):
        return None
    if json_depth(text) > MAX_JSON_DEPTH:  # json.loads would recurse (and raise) that deep
        raise ValueError(f"it nests deeper than {MAX_JSON_DEPTH} levels of JSON")
    try:
        data = json.loads(text)
    except ValueError:
        raise ValueError("it starts like JSON but is not valid JSON") from None
    if not isinstance(data, dict):
        raise ValueError("it is not a JSON object")
    if data.get("type") != "service_account":
        raise ValueError(
            'its "type" is not "service_account" (user credentials and external account '
            "files are not service-account keys)"
        )
    fields = {}
    for name in ("client_email", "private_key", "private_key_id", "token_uri"):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'it has no "{name}"')
        fields[name] = value.strip() if name != "private_key" else value
    project = data.get("project_id")
    return ServiceAccountKey(
        **fields, project_id=project if isinstance(project, str) and project else None
    )


def key_file_secrets(text: str) -> tuple[str, ...]:
    """What to redact of a Secret value that may be a service-account key file: the key's
    private parts (its account and project may be named in messages); of other JSON (a
    user's credentials file put there by mistake) every string value; else the whole."""
    try:
        key = service_account_key(text)
    except ValueError:
        if json_depth(text) > MAX_JSON_DEPTH:
            return (text,)
        try:
            return tuple(_strings(json.loads(text))) or (text,)
        except ValueError:
            return (text,)
    return key.secrets() if key is not None else (text,)


def _strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for value in data.values():
            yield from _strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from _strings(value)
