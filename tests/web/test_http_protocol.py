"""The coalescing HTTP protocol: one write per small response, and HTTP/1.1 unchanged.

Driven through a real uvicorn server and raw sockets, so that what is checked is what a
client receives: keep-alive, HEAD, 100-continue, streaming, `Connection: close` and
pipelining. The write count is read from the kernel (/proc/<pid>/io) of a real `serve`
process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
import uvicorn

from service.web.http_protocol import CoalescingHttpToolsProtocol
from tests import support

STREAM_READ: list[asyncio.Event] = []  # set by the test as it reads each part of /stream


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if path == "/stream":
        # Each part after the first is produced only once the client has read the one
        # before (the test opens the gate): a protocol that held the stream until its end
        # would never deliver part0, and the client's read would time out.
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for n in range(3):
            if n:
                await asyncio.wait_for(STREAM_READ[n - 1].wait(), 10)
            await send({"type": "http.response.body", "body": b"part%d\n" % n, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/echo":
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await _answer(send, 200, body)
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    await _answer(send, 200, b"hello " + path.encode())


async def _answer(send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def server() -> AsyncIterator[int]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, http=CoalescingHttpToolsProtocol, log_config=None
    )
    instance = uvicorn.Server(config)
    task = asyncio.create_task(instance.serve())
    while not instance.started:
        if task.done():  # a failed startup ends serve() (older uvicorn without raising)
            task.result()
            pytest.fail("uvicorn did not start")
        await asyncio.sleep(0.01)
    yield instance.servers[0].sockets[0].getsockname()[1]
    instance.should_exit = True
    await task


async def _read_response(reader: asyncio.StreamReader, head: bool = False) -> tuple[bytes, bytes]:
    header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = None
    for line in header.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    if head or length is None:
        return header, b""
    return header, await asyncio.wait_for(reader.readexactly(length), 5)


@contextlib.asynccontextmanager
async def _connection(port: int):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_keep_alive_requests_get_whole_responses_in_order(server: int) -> None:
    async with _connection(server) as (reader, writer):
        for n in range(3):
            writer.write(b"GET /r%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
            header, body = await _read_response(reader)
            assert header.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == b"hello /r%d" % n


async def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    async with _connection(server) as (reader, writer):
        writer.write(b"".join(b"GET /p%d HTTP/1.1\r\nHost: t\r\n\r\n" % n for n in range(4)))
        bodies = [(await _read_response(reader))[1] for _ in range(4)]
    assert bodies == [b"hello /p%d" % n for n in range(4)]


async def test_head_and_204_answers_are_sent_although_no_body_is_written(server: int) -> None:
    async with _connection(server) as (reader, writer):
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n")
        header, _ = await _read_response(reader, head=True)
        assert header.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 8" in header
        writer.write(b"GET /empty HTTP/1.1\r\nHost: t\r\n\r\n")
        header, _ = await _read_response(reader, head=True)
        assert header.startswith(b"HTTP/1.1 204 No Content\r\n")
        writer.write(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")  # the connection still works
        assert (await _read_response(reader))[1] == b"hello /after"


async def test_an_interim_100_continue_is_sent_at_once_not_held(server: int) -> None:
    async with _connection(server) as (reader, writer):
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ping")
        header, body = await _read_response(reader)
        assert header.startswith(b"HTTP/1.1 200 OK") and body == b"ping"


async def test_a_streamed_response_arrives_chunk_by_chunk(server: int) -> None:
    STREAM_READ[:] = [asyncio.Event(), asyncio.Event()]
    async with _connection(server) as (reader, writer):
        writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        header = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"transfer-encoding: chunked" in header
        for n in range(2):  # part n arrives before part n + 1 is produced
            part = await asyncio.wait_for(reader.readuntil(b"part%d\n\r\n" % n), 5)
            assert b"part%d" % (n + 1) not in part
            STREAM_READ[n].set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
        assert rest.startswith(b"6\r\npart2\n\r\n")


async def test_connection_close_gets_the_whole_response_before_the_close(server: int) -> None:
    async with _connection(server) as (reader, writer):
        writer.write(b"GET /bye HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 5)  # until the server closes
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\nhello /bye")


@pytest.mark.slow
async def test_the_service_answers_a_pixel_with_one_write_system_call(database_url, smtp) -> None:
    """Forged pixel tokens: the same 200 + GIF, and nothing to record, so every write the
    process makes during the run is an HTTP response (plain uvicorn makes two each). In the
    web role (`--no-worker`): the outbox's polls and retention would write to PostgreSQL's
    socket meanwhile, the more the slower a loaded machine answers (364 for 300 once)."""
    service = support.ServiceProcess(
        support.base_env(database_url, smtp.url), "--no-worker"
    ).start()
    try:
        await service.wait_ready()
        assert service.proc is not None
        requests = 300
        async with _connection(service.port) as (reader, writer):
            before = support.proc_field(service.proc.pid, "io", "syscw")
            for n in range(requests):
                writer.write(b"GET /o/forged%d.gif HTTP/1.1\r\nHost: t\r\n\r\n" % n)
                header, body = await _read_response(reader)
                assert header.startswith(b"HTTP/1.1 200 OK") and body[:6] == b"GIF89a"
            writes = support.proc_field(service.proc.pid, "io", "syscw") - before
        assert requests <= writes < requests * 1.2
    finally:
        service.stop()
