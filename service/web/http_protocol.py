"""uvicorn's httptools protocol, sending each small response in one write instead of two.

uvicorn writes a response's status line and headers when the app sends
`http.response.start`, and the body when it sends `http.response.body`: two `send()`
system calls and, with TCP_NODELAY, two TCP segments for a 43-byte pixel. In the pixel's
profile the header write was the largest single cost of the process. Here the header
block is held until the first body write and leaves with it, in one system call and one
segment, for every endpoint. Streaming responses are unchanged in effect: the headers go
out with the first chunk. A response with no body write (HEAD, 204, 304) is flushed
when uvicorn completes it; an interim `100 Continue` is never held.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_STATUS_LINE = b"HTTP/1.1 "
_END_OF_HEADERS = b"\r\n\r\n"


class CoalescingTransport:
    """Wraps the connection's transport; everything but `write` and `close` passes through."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif (
            isinstance(data, bytes)
            and data.startswith(_STATUS_LINE)
            and data.endswith(_END_OF_HEADERS)
            and data[9:10] != b"1"  # an interim 1xx answer goes out at once
        ):
            self._held = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """`uvicorn.run(http=...)`: the httptools protocol over a CoalescingTransport."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]

    def on_response_complete(self) -> None:
        self.transport.flush()  # type: ignore[attr-defined]
        super().on_response_complete()
