"""Loopback servers that misbehave on the wire: raw asyncio sockets, no HTTP framework.

Each `Behaviour` is a coroutine that gets the parsed request head and the stream writer and
does something a real provider would not: never answer, trickle bytes, send a huge or
non-API body, redirect elsewhere. `RawServer` runs one in the test's own event loop and
records every request head it received (so a test can assert that a key did or did not
arrive). `make_tls` writes a private CA and a server certificate for 127.0.0.1/localhost.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class RequestHead:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names


Behaviour = Callable[[RequestHead, asyncio.StreamWriter], Awaitable[None]]


async def _read_head(reader: asyncio.StreamReader) -> RequestHead | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = [*lines[0].split(" ", 2), "", ""][:3]
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if length:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readexactly(length)
    return RequestHead(method, target, headers)


@dataclass
class LoopbackServer:
    """A TCP (or TLS) server on 127.0.0.1 for `async with`, each connection in a task of its
    own, all ended when the block ends; subclasses say what a connection hears (`_talk`)."""

    tls: ssl.SSLContext | None = field(default=None, kw_only=True)
    connections: int = field(default=0, kw_only=True)
    port: int = field(default=0, kw_only=True)  # 0: a free port, chosen when it starts
    _server: asyncio.Server | None = field(default=None, kw_only=True)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set, kw_only=True)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        stopping = False
        try:
            await self._talk(reader, writer)
        except asyncio.CancelledError:
            stopping = True  # the server is shutting down: end the connection, no goodbyes
        except (ConnectionError, ssl.SSLError):
            pass  # the client left
        finally:
            self._tasks.discard(task)
            if stopping:
                writer.transport.abort()
            else:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), 1)


@dataclass
class RawServer(LoopbackServer):
    """`async with RawServer(behaviour) as server:` serves on 127.0.0.1 until the block ends."""

    behaviour: Behaviour
    requests: list[RequestHead] = field(default_factory=list)

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (head := await _read_head(reader)) is not None:
            self.requests.append(head)
            await self.behaviour(head, writer)
            if writer.is_closing():
                break


def _head(status: int, headers: Mapping[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} X"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- behaviours ------------------------------------------------------------------------


def answer(
    status: int = 200,
    body: bytes | str = b"",
    content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> Behaviour:
    """A fixed answer (HTML pages, broken JSON, error bodies with HTTP 200, ...)."""
    data = body.encode() if isinstance(body, str) else body

    async def behave(head: RequestHead, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, {"Content-Type": content_type, **(headers or {})}, len(data)))
        writer.write(data)
        await writer.drain()

    return behave


def by_path(routes: Mapping[str, Behaviour], default: Behaviour | None = None) -> Behaviour:
    """Dispatch on the request path (query string ignored)."""
    fallback = default or answer(404, '{"error": {"message": "no route"}}')

    async def behave(head: RequestHead, writer: asyncio.StreamWriter) -> None:
        await routes.get(head.target.split("?", 1)[0], fallback)(head, writer)

    return behave


def hang() -> Behaviour:
    """Accept the request and never answer."""

    async def behave(head: RequestHead, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    return behave


def trickle(every: float = 0.05, total: int = 10_000) -> Behaviour:
    """Answer 200 promptly, then dribble the body one byte at a time."""

    async def behave(head: RequestHead, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Type": "application/json"}, total))
        for _ in range(total):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(every)

    return behave


@dataclass
class Huge:
    """A 200 answer of `total` bytes, sent as fast as the client reads; counts what it sent."""

    total: int = 64 * 1024 * 1024
    sent: int = 0
    finished: bool = False

    async def __call__(self, head: RequestHead, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"Content-Type": "application/json"}, self.total))
        chunk = b"[" + b"0," * 32767 + b"0"
        while self.sent < self.total:
            piece = chunk[: self.total - self.sent]
            writer.write(piece)
            await writer.drain()
            self.sent += len(piece)
        self.finished = True


def redirect(location: str, status: int = 302) -> Behaviour:
    async def behave(head: RequestHead, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, {"Location": location}, 0))
        await writer.drain()

    return behave


# --- TLS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca_pem: bytes  # the private CA that signed the server certificate
    cert_file: Path  # server certificate chain
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def make_tls(directory: Path, hosts: Sequence[str] = ("localhost", "127.0.0.1")) -> TLSFiles:
    """A CA and a server certificate for `hosts` (names or addresses), valid for a day."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmconn test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([_san(host) for host in hosts]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return TLSFiles(ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file)


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
