"""A receiver of events on loopback, as another system would run one: a real uvicorn
server that verifies every request with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests import support


def new_secret(seed: int = 1) -> str:
    return "whsec_" + base64.b64encode(bytes([seed]) * 32).decode()


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    event: dict


@dataclass
class Receiver:
    """Answers 2xx to verified requests (401 to others), or `failing` (a status) while
    set; every verified request is in `deliveries`, every request's id in `attempts`."""

    secrets: dict[str, str]  # path -> whsec_ secret
    port: int = field(default_factory=support.free_port)
    failing: int | None = None
    deliveries: list[Delivery] = field(default_factory=list)
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (path, webhook-id)
    refused: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def accepted(self, path: str | None = None) -> list[Delivery]:
        return [d for d in self.deliveries if path is None or d.path == path]

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        path = request.url.path
        self.attempts.append((path, request.headers.get("webhook-id", "")))
        try:
            event = Webhook(self.secrets[path]).verify(body, dict(request.headers))
        except (WebhookVerificationError, KeyError):
            self.refused += 1
            return Response(status_code=401)
        if self.failing is not None:
            return Response(status_code=self.failing)
        assert json.loads(body) == event
        self.deliveries.append(Delivery(path, dict(request.headers), event))
        return Response(status_code=204)

    async def start(self) -> None:
        app = Starlette(routes=[Route(p, self._hook, methods=["POST"]) for p in self.secrets])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
        )
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task
            self._server = self._task = None


@contextlib.asynccontextmanager
async def receiving(secrets: dict[str, str], start: bool = True) -> AsyncIterator[Receiver]:
    receiver = Receiver(secrets)
    if start:
        await receiver.start()
    try:
        yield receiver
    finally:
        await receiver.stop()
