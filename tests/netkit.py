"""The network of unit and security tests: loopback, and nothing else.

`loopback_only` is the resolver their probe clients use: `localhost` is 127.0.0.1 and no
other name exists, so the machine's resolver is never asked and no test can reach past
loopback by a name. Tests of the egress guard's own decisions fake the resolver they need.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmconn.net.guard import DNSLookupError


async def loopback_only(host: str, port: int) -> Sequence[str]:
    if host == "localhost":
        return ["127.0.0.1"]
    raise DNSLookupError(host, "Name or service not known")
