"""Bounded response bodies: every probe client's transports are wrapped in `CappedTransport`,
which undoes Content-Encoding itself, in bounded steps, and ends a body that passes
MAX_BODY_BYTES on the wire or after any decoding step (`ResponseTooLarge`).

httpx decodes without a total limit and the MCP SDK reads whole answers into memory, so
300 KB of gzip became 300 MB there. The cap lives here, below every reader, and httpx never
sees a Content-Encoding left to decode.
"""

from __future__ import annotations

import importlib
import itertools
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import httpx2

MAX_BODY_BYTES = 1024 * 1024  # per response: on the wire, and after each decoding step
_STEP = 64 * 1024  # the most one decompression call may produce before it is counted
_MAX_CODINGS = 5  # as httpx: more content codings than this on one answer is an attack


class ResponseTooLarge(httpx2.DecodingError):
    """A response body passed MAX_BODY_BYTES, on the wire or once decoded; `what` says which,
    in words fit for a status message ("larger than 1 MiB once decoded (gzip)")."""

    def __init__(self, limit: int, codings: Sequence[str], *, decoded: bool) -> None:
        size = f"larger than {limit / (1024 * 1024):g} MiB"
        if not codings:
            what = size
        elif decoded:
            what = f"{size} once decoded ({', '.join(codings)})"
        else:
            what = f"{size} on the wire, before decoding ({', '.join(codings)})"
        super().__init__(what)
        self.what = what


class _Decoder:
    """One content coding, undone in steps of at most about _STEP bytes of output."""

    coding: str
    produced = 0  # bytes of output so far, counted by _CappedBody

    def decode(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def flush(self) -> Iterator[bytes]:
        return iter(())

    def _failed(self, exc: Exception) -> httpx2.DecodingError:
        return httpx2.DecodingError(f"the body is not valid {self.coding} ({exc})")


class _Zlib(_Decoder):
    def __init__(self, coding: str, wbits: int) -> None:
        self.coding = coding
        self._inflate = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inflate.eof:
            return  # what follows the stream is ignored, as httpx does
        try:
            out = self._inflate.decompress(data, _STEP)
            while out:
                yield out
                out = self._inflate.decompress(self._inflate.unconsumed_tail, _STEP)
        except zlib.error as exc:
            raise self._failed(exc) from None

    def flush(self) -> Iterator[bytes]:
        # decode() left no input unconsumed: this is at most what zlib still holds back.
        try:
            if out := self._inflate.flush():
                yield out
        except zlib.error as exc:
            raise self._failed(exc) from None


def _gzip() -> _Decoder:
    return _Zlib("gzip", 16 + zlib.MAX_WBITS)


class _Deflate(_Decoder):
    """Deflate, zlib-wrapped as RFC 9110 means it, or raw as some servers send it."""

    coding = "deflate"

    def __init__(self) -> None:
        self._head = b""
        self._inner: _Zlib | None = None

    def decode(self, data: bytes) -> Iterator[bytes]:
        if self._inner is None:
            self._head += data
            if len(self._head) < 2:
                return
            wrapped = _zlib_header(self._head)
            self._inner = _Zlib(self.coding, zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        yield from self._inner.decode(data)

    def flush(self) -> Iterator[bytes]:
        if self._head:
            raise self._failed(ValueError("one byte"))
        if self._inner is not None:
            yield from self._inner.flush()


def _zlib_header(head: bytes) -> bool:
    """RFC 1950: compression method 8, window at most 32 KiB, and a check on both bytes."""
    return head[0] & 0x0F == 8 and head[0] >> 4 <= 7 and (head[0] << 8 | head[1]) % 31 == 0


def _optional(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


_brotli = _optional("brotli")
if _brotli is not None and not hasattr(_brotli.Decompressor, "can_accept_more_data"):
    _brotli = None  # before brotli 1.2 its output cannot be bounded: do not ask for br
_zstd = _optional("compression.zstd") or _optional("backports.zstd")


class _Brotli(_Decoder):
    coding = "br"

    def __init__(self) -> None:
        self._inflate = _brotli.Decompressor()

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            out = self._inflate.process(data, output_buffer_limit=_STEP)
            while out:
                yield out
                if self._inflate.can_accept_more_data():
                    return
                out = self._inflate.process(b"", output_buffer_limit=_STEP)
        except _brotli.error as exc:
            raise self._failed(exc) from None


class _Zstd(_Decoder):
    coding = "zstd"

    def __init__(self) -> None:
        self._inflate = self._decompressor()

    @staticmethod
    def _decompressor() -> Any:
        # RFC 9659: HTTP's zstd windows are at most 8 MiB; a frame asking for more is refused.
        return _zstd.ZstdDecompressor(options={_zstd.DecompressionParameter.window_log_max: 23})

    def decode(self, data: bytes) -> Iterator[bytes]:
        try:
            while True:
                if self._inflate.eof:  # one frame ended; another may follow
                    data = self._inflate.unused_data + data
                    if not data:
                        return
                    self._inflate = self._decompressor()
                out = self._inflate.decompress(data, _STEP)
                data = b""
                if out:
                    yield out
                elif not self._inflate.eof:
                    return
                if self._inflate.needs_input:
                    return
        except (_zstd.ZstdError, EOFError) as exc:
            raise self._failed(exc) from None


_DECODERS: dict[str, Callable[[], _Decoder]] = {"gzip": _gzip, "deflate": _Deflate}
if _brotli is not None:
    _DECODERS["br"] = _Brotli
if _zstd is not None:
    _DECODERS["zstd"] = _Zstd
# Asked for on every request, so servers send only what is decoded here.
ACCEPT_ENCODING = ", ".join(_DECODERS)


class _CappedBody(httpx2.AsyncByteStream):
    """A response body, decoded here and counted: wire bytes, and every decoder's output."""

    def __init__(self, inner: httpx2.AsyncByteStream, codings: list[str], limit: int) -> None:
        self._inner = inner
        self._codings = codings  # in the order they were applied
        self._limit = limit

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if len(self._codings) > _MAX_CODINGS:
            raise httpx2.DecodingError(f"more than {_MAX_CODINGS} content codings")
        decoders = [_DECODERS[coding]() for coding in reversed(self._codings)]
        wire = 0
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                wire += len(chunk)
                if wire > self._limit:
                    raise ResponseTooLarge(self._limit, self._codings, decoded=False)
                for out in self._pipe(decoders, chunk, final=False):
                    yield out
            for out in self._pipe(decoders, b"", final=True):
                yield out
        finally:
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()

    def _pipe(self, decoders: list[_Decoder], data: bytes, *, final: bool) -> Iterator[bytes]:
        # Generators all the way: each step is pulled only as far as the next one needs, so
        # no more than _STEP per decoder is ever held, and counting stops a bomb mid-way.
        chunks: Iterator[bytes] = iter((data,) if data else ())
        for decoder in decoders:
            chunks = self._counted(decoder, chunks, final)
        return chunks

    def _counted(
        self, decoder: _Decoder, upstream: Iterator[bytes], final: bool
    ) -> Iterator[bytes]:
        outputs = itertools.chain.from_iterable(decoder.decode(chunk) for chunk in upstream)
        if final:
            outputs = itertools.chain(outputs, decoder.flush())
        for out in outputs:
            decoder.produced += len(out)
            if decoder.produced > self._limit:
                raise ResponseTooLarge(self._limit, self._codings, decoded=True)
            yield out

    async def aclose(self) -> None:
        await self._inner.aclose()


class CappedTransport(httpx2.AsyncBaseTransport):
    """Wraps a transport so that no response body is read past MAX_BODY_BYTES, decoded or not.

    Content-Encoding is undone here (gzip, deflate, and br or zstd when their libraries are
    importable; only those are asked for) and the header is removed, so httpx never decodes
    again. Codings not known here are left as they are, as httpx does: the body stays opaque
    and is still counted."""

    def __init__(self, inner: httpx2.AsyncBaseTransport, limit: int = MAX_BODY_BYTES) -> None:
        self._inner = inner
        self._limit = limit

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        response = await self._inner.handle_async_request(request)
        if not isinstance(response.stream, httpx2.AsyncByteStream):
            raise TypeError("an async transport answered with a sync body")
        named = response.headers.get_list("content-encoding", split_commas=True)
        if named:
            del response.headers["content-encoding"]
        codings = [c for c in (n.strip().lower() for n in named) if c in _DECODERS]
        response.stream = _CappedBody(response.stream, codings, self._limit)
        return response

    async def __aenter__(self) -> CappedTransport:
        await self._inner.__aenter__()
        return self

    async def aclose(self) -> None:
        await self._inner.aclose()
