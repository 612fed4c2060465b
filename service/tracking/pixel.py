"""`GET`/`HEAD /o/{token}.gif`: the open-tracking pixel, the service's hot path.

Always the same answer: 200 with a 43-byte transparent GIF that no cache keeps, also for
forged tokens and erased subscribers (a broken image in an email is worse than a lost
count). A raw ASGI endpoint rather than a Starlette request/response function: it does
only what an open needs — verify the token, take the client address uvicorn resolved
(`X-Forwarded-For` believed only from FORWARDED_ALLOW_IPS, see service.web.clientinfo), the
user agent cut to a sane length and the time — and hands the event to the recorder.
Classification, the country and the IP reduction happen in the recorder, per batch.
"""

from __future__ import annotations

import base64
import time

from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.tokens import InvalidToken, Tokens
from service.tracking.classify import MAX_USER_AGENT
from service.tracking.recorder import Open

GIF = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")
HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", str(len(GIF)).encode()),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]


async def answer(send: Send, with_body: bool) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": GIF if with_body else b""})


def request_user_agent(scope: Scope) -> str | None:
    """The raw User-Agent header, cut to MAX_USER_AGENT; cleaned later, once per string."""
    for name, value in scope["headers"]:
        if name == b"user-agent":
            return value[:MAX_USER_AGENT].decode("latin-1") or None
    return None


def request_ip(scope: Scope) -> str | None:
    """The address uvicorn resolved (the same value `clientinfo.client_ip` reads)."""
    client = scope.get("client")
    return client[0] if client else None


class Pixel:
    """The ASGI endpoint. Records nothing for HEAD, nor for tokens that do not verify."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "HEAD":
            await answer(send, with_body=False)
            return
        state = scope["app"].state
        tokens: Tokens = state.tokens
        try:
            claim = tokens.verify_pixel(scope["path_params"]["token"])
        except InvalidToken:
            await answer(send, with_body=True)
            return
        recorder = getattr(state, "recorder", None)
        if recorder is not None:
            done = recorder.submit(
                Open(
                    claim.subscriber_id,
                    claim.campaign_id,
                    time.time(),
                    request_ip(scope),
                    request_user_agent(scope),
                )
            )
            if done is not None and recorder.wait:
                await done  # shared by the batch; it refuses cancel(), see BatchDone
        await answer(send, with_body=True)


pixel = Pixel()


class TokenRoute(Route):
    """A GET/HEAD route `prefix{token}suffix` whose token may hold anything, `/` included
    (forged, or mangled by a mail client): such a request still gets the endpoint's
    answer (the GIF), not a 404. Its `path` stays the template, for metric labels, the
    quiet access log and the OpenAPI file. The app matches these routes on its short way
    in with `token()`, two string tests instead of the route's regex."""

    def __init__(self, template: str, endpoint: ASGIApp, methods: list[str]) -> None:
        if not set(methods) <= {"GET", "HEAD"}:
            raise ValueError(f"{template}: the short way in is for GET and HEAD only")
        super().__init__(template.replace("{token}", "{token:path}"), endpoint, methods=methods)
        self.path = template
        self.prefix, _, self.suffix = template.partition("{token}")

    def token(self, path: str) -> str | None:
        """The token of a path this route matches, else None (as `matches` would say)."""
        if (
            path.startswith(self.prefix)
            and path.endswith(self.suffix)
            and len(path) >= len(self.prefix) + len(self.suffix)
        ):
            return path[len(self.prefix) : len(path) - len(self.suffix)]
        return None


def route() -> TokenRoute:
    return TokenRoute("/o/{token}.gif", pixel, methods=["GET", "HEAD"])
