"""An HTTP/2 server over TLS (ALPN "h2") on 127.0.0.1, built on the `h2` library's server
side: every request is answered 200 with the same JSON body, sent as the peer's flow-control
window allows. For the probes' HTTP/2 path (httpcore's, through the guarded backend), which
every provider that offers HTTP/2 gets."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Self

import h2.config
import h2.connection
import h2.events

from servers.misbehaving import LoopbackServer


@dataclass
class H2Server(LoopbackServer):
    """`async with H2Server(body, tls=context) as server:` serves HTTP/2 until the block
    ends; `requests` counts the requests answered."""

    body: bytes = b"{}"
    requests: int = 0

    async def __aenter__(self) -> Self:
        assert self.tls is not None, "HTTP/2 is offered over TLS (ALPN)"
        self.tls.set_alpn_protocols(["h2"])
        return await super().__aenter__()

    async def _talk(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        unsent: dict[int, bytes] = {}  # stream -> the body's part not yet sent
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
