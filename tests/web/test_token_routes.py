"""Every route that takes a token from a link refuses a bad one the same way: never a
500, whatever the token looks like (forged, an old dotted format for a purpose that
never had one, empty, oversized, not ASCII)."""

from __future__ import annotations

import httpx
import pytest

from tests import support
from tests.conftest import CLIENT_IP, running
from tests.manage_support import TOKENS

# (method, path template): every route whose path carries a token of a link.
ROUTES = [
    ("GET", "/confirm/{}"),
    ("POST", "/confirm/{}"),
    ("GET", "/cancel/{}"),
    ("POST", "/cancel/{}"),
    ("GET", "/unsubscribe/{}"),
    ("POST", "/unsubscribe/{}"),
    ("GET", "/tracking/{}"),
    ("POST", "/tracking/{}"),
    ("GET", "/manage/{}"),
    ("POST", "/manage/{}"),
    ("GET", "/manage/link/{}"),
    ("POST", "/manage/link/{}"),
    ("GET", "/manage/address/{}"),
    ("POST", "/manage/address/{}"),
    ("GET", "/o/{}.gif"),
    ("HEAD", "/o/{}.gif"),
]

TOKENS_OF_NO_ONE = {
    "forged": TOKENS.manage(1)[:-2] + ("AA" if not TOKENS.manage(1).endswith("AA") else "BB"),
    "other_layout": TOKENS.manage_link(1, 999),  # names no row; one-id routes refuse it
    # The itsdangerous layout of earlier releases, for purposes that never had it
    # (manage, fresh links, address changes) and for those that had (a bad signature).
    "dotted_old_format": "1.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "dotted_timed": "1.AAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "dotted_non_ascii": "\u00e9.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
    "empty": "",
    "oversized": "A" * 5000,
    "oversized_dotted": "1." + "A" * 5000,
    "non_ascii": "\u00e9t\u00e9\u2603" * 10,
    "percent_encoded": "%00%ff",
}


@pytest.fixture
async def plain_client(settings):
    """A client that sees the app's 500 as a response (ASGITransport raises by default)."""
    async with running(settings) as (app, _client):
        transport = httpx.ASGITransport(
            app=app, client=(CLIENT_IP, 50000), raise_app_exceptions=False
        )
        async with httpx.AsyncClient(transport=transport, base_url=support.PUBLIC_URL) as client:
            yield client


@pytest.mark.parametrize("kind", sorted(TOKENS_OF_NO_ONE))
async def test_no_token_route_answers_500_to_a_bad_token(plain_client, db, kind) -> None:
    token = TOKENS_OF_NO_ONE[kind]
    await db.execute(
        "INSERT INTO subscribers (id, email, status, confirmed_at)"
        " OVERRIDING SYSTEM VALUE VALUES (1, 'one@example.org', 'active', now())"
    )
    for method, template in ROUTES:
        path = template.format(token)
        data = {"action": "unsubscribe"} if method == "POST" else None
        response = await plain_client.request(method, path, data=data)
        assert response.status_code < 500, (method, template, kind, response.status_code)
        if template.startswith("/o/"):
            assert response.status_code == 200  # an email never shows a broken image
        elif token:
            assert response.status_code in (400, 404), (method, template, kind)
    # Nothing was changed by any of them.
    assert await db.fetchval("SELECT status FROM subscribers WHERE id = 1") == "active"
