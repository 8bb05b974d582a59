"""An HTTP/2 server over TLS (ALPN "h2") on 127.0.0.1, built on the `h2` library's server
side: every request is answered 200 with the same JSON body, sent as the peer's flow-control
window allows. For the probes' own HTTP/2 path (httpcore's, over the operator's network
stream), which every provider that offers HTTP/2 gets."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from types import TracebackType

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Server:
    """`async with H2Server(context, body) as server:` serves HTTP/2 until the block ends."""

    tls: ssl.SSLContext
    body: bytes = b"{}"
    connections: int = 0
    requests: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def __aenter__(self) -> H2Server:
        self.tls.set_alpn_protocols(["h2"])
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        unsent: dict[int, bytes] = {}  # stream -> the body's part not yet sent
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        self.requests += 1
                        conn.send_headers(
                            event.stream_id,
                            [
                                (":status", "200"),
                                ("content-type", "application/json"),
                                ("content-length", str(len(self.body))),
                            ],
                        )
                        unsent[event.stream_id] = self.body
                    elif isinstance(event, h2.events.StreamReset):
                        unsent.pop(event.stream_id, None)
                for stream_id, rest in list(unsent.items()):
                    room = min(conn.local_flow_control_window(stream_id), len(rest))
                    while room > 0:
                        size = min(room, conn.max_outbound_frame_size)
                        conn.send_data(stream_id, rest[:size])
                        rest, room = rest[size:], room - size
                    if rest:
                        unsent[stream_id] = rest
                    else:
                        conn.end_stream(stream_id)
                        del unsent[stream_id]
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # the client left
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
