"""The dashboard under /admin: sign-in, session cookie, CSRF, pages, sending and erasure."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest
from itsdangerous import TimestampSigner
from starlette.applications import Starlette

from service.admin.dashboard import auth
from tests import support
from tests.conftest import CLIENT_IP

HTTPS_BASE = "https://newsletter.test"
FORM = {"content-type": "application/x-www-form-urlencoded"}
PAGES = ["/admin", "/admin/campaigns", "/admin/campaigns/new", "/admin/subscribers"]


@contextlib.asynccontextmanager
async def browser(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A client with its own cookie jar, over https as in production (Secure cookies)."""
    transport = httpx.ASGITransport(app=app, client=(CLIENT_IP, 50000))
    async with httpx.AsyncClient(transport=transport, base_url=HTTPS_BASE) as client:
        yield client


@pytest.fixture
async def web(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with browser(app) as client:
        yield client


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, token: str = support.ADMIN_TOKEN) -> str:
    """Signs in through the form; returns the session's CSRF token."""
    form = await client.get("/admin/login")
    answer = await client.post(
        "/admin/login", data={"login_token": field(form.text, "login_token"), "token": token}
    )
    assert answer.status_code == 303, answer.text
    assert answer.headers["location"] == "/admin"
    page = await client.get("/admin")
    assert page.status_code == 200
    return field(page.text, "csrf")


def set_cookie(response: httpx.Response, name: str) -> str:
    headers = [h for h in response.headers.get_list("set-cookie") if h.startswith(name + "=")]
    assert len(headers) == 1, headers
    return headers[0]


async def add_subscriber(
    db: asyncpg.Connection, email: str, status: str = "active", name: str | None = None
) -> int:
    return await db.fetchval(
        "INSERT INTO subscribers (email, name, status, confirmed_at)"
        " VALUES ($1, $2, $3, CASE WHEN $3 = 'active' THEN now() END) RETURNING id",
        email,
        name,
        status,
    )


async def add_counts(db: asyncpg.Connection, campaign: int, *rows: tuple[Any, ...]) -> None:
    """Anonymous counters of a campaign: (dimension, key, opens, machine opens, unique)."""
    await db.executemany(
        "INSERT INTO campaign_counts (campaign_id, dimension, key, opens, machine_opens, unique_opens)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [(campaign, *row) for row in rows],
    )


async def add_campaign(db: asyncpg.Connection, name: str = "Spring news", **values: Any) -> int:
    return await db.fetchval(
        "INSERT INTO campaigns (name, subject, html, text, first_sent_at, recipients, sent)"
        " VALUES ($1, $2, '<p>Hi</p>', 'Hi', $3, $4, $5) RETURNING id",
        name,
        values.get("subject", "What is new"),
        values.get("first_sent_at"),
        values.get("recipients", 0),
        values.get("sent", 0),
    )


# -- sign-in and the session cookie --------------------------------------------------
@pytest.mark.parametrize("path", [*PAGES, "/admin/campaigns/1", "/admin/campaigns/1/send"])
async def test_pages_send_visitors_without_a_session_to_the_sign_in_form(
    web: httpx.AsyncClient, path: str
) -> None:
    answer = await web.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/admin/login"


async def test_sign_in_sets_an_http_only_secure_strict_cookie_that_expires(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    form = await web.get("/admin/login")
    assert form.status_code == 200
    assert 'type="password"' in form.text
    answer = await web.post(
        "/admin/login",
        data={"login_token": field(form.text, "login_token"), "token": support.ADMIN_TOKEN},
    )
    cookie = set_cookie(answer, auth.SESSION_COOKIE).lower()
    for attribute in ("httponly", "secure", "samesite=strict", "path=/admin", "max-age=28800"):
        assert attribute in cookie.split("; "), (attribute, cookie)
    row = await db.fetchrow("SELECT expires_at - created_at AS lifetime FROM admin_sessions")
    assert row["lifetime"] == timedelta(hours=8)
    # The session cookie holds a signed random id, never the admin token.
    assert support.ADMIN_TOKEN not in cookie
    assert (await web.get("/admin")).status_code == 200


async def test_cookie_is_not_secure_in_dev_mode(app_factory: Callable[..., Any]) -> None:
    catcher = f"smtp://127.0.0.1:{support.free_port()}"
    async with app_factory(dev=True, smtp_url=catcher) as (app, _), browser(app) as web:
        form = await web.get("/admin/login")
        answer = await web.post(
            "/admin/login",
            data={"login_token": field(form.text, "login_token"), "token": support.ADMIN_TOKEN},
        )
        cookie = set_cookie(answer, auth.SESSION_COOKIE).lower().split("; ")
        assert "secure" not in cookie
        assert "httponly" in cookie and "samesite=strict" in cookie


async def test_session_lifetime_follows_session_max_age(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory(session_max_age=600) as (app, _), browser(app) as web:
        form = await web.get("/admin/login")
        answer = await web.post(
            "/admin/login",
            data={"login_token": field(form.text, "login_token"), "token": support.ADMIN_TOKEN},
        )
        assert "max-age=600" in set_cookie(answer, auth.SESSION_COOKIE).lower()


async def test_a_wrong_token_is_refused_and_opens_no_session(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    form = await web.get("/admin/login")
    for wrong in ("", "x", support.ADMIN_TOKEN + "x", support.ADMIN_TOKEN[:-1], "é" * 3000):
        answer = await web.post(
            "/admin/login", data={"login_token": field(form.text, "login_token"), "token": wrong}
        )
        assert answer.status_code in (401, 413), wrong
        if answer.status_code == 401:
            assert "not valid" in answer.text
            form = answer  # the answer holds a fresh form
        assert auth.SESSION_COOKIE + "=" not in answer.headers.get("set-cookie", "")
    assert await db.fetchval("SELECT count(*) FROM admin_sessions") == 0
    assert (await web.get("/admin")).status_code == 303


async def test_sign_in_without_the_forms_own_token_is_refused(
    app: Starlette, db: asyncpg.Connection
) -> None:
    """A sign-in posted from another site (no login cookie, or a token of another form)."""
    async with browser(app) as web:
        answer = await web.post(
            "/admin/login", data={"login_token": "guess", "token": support.ADMIN_TOKEN}
        )
        assert answer.status_code == 403
        first = field((await web.get("/admin/login")).text, "login_token")
    async with browser(app) as other:
        await other.get("/admin/login")  # a cookie of its own
        answer = await other.post(
            "/admin/login", data={"login_token": first, "token": support.ADMIN_TOKEN}
        )
        assert answer.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM admin_sessions") == 0


async def test_without_admin_tokens_the_dashboard_cannot_be_entered(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory(admin_tokens=()) as (app, _), browser(app) as web:
        form = await web.get("/admin/login")
        assert form.status_code == 503
        assert "ADMIN_TOKENS" in form.text and 'name="token"' not in form.text
        answer = await web.post("/admin/login", data={"login_token": "x", "token": ""})
        assert answer.status_code == 503


async def test_the_sign_in_form_redirects_when_already_signed_in(web: httpx.AsyncClient) -> None:
    await sign_in(web)
    answer = await web.get("/admin/login")
    assert answer.status_code == 303 and answer.headers["location"] == "/admin"


@pytest.mark.parametrize(
    "cookie",
    [
        "nonsense",
        "a" * 5000,
        "abc.def.ghi",
        TimestampSigner(["another-key-0123456789-0123456789-xyz"], salt=auth.SESSION_SALT)
        .sign("some-session")
        .decode(),
        # Correctly signed, but no such session on the server.
        TimestampSigner([support.TEST_KEY], salt=auth.SESSION_SALT, sep=".")
        .sign("never-issued")
        .decode(),
        # Signed for another purpose (the sign-in form's cookie).
        TimestampSigner([support.TEST_KEY], salt=auth.LOGIN_SALT, sep=".")
        .sign("never-issued")
        .decode(),
    ],
    # Fixed ids: the signed values carry the time, and parallel workers (pytest-xdist)
    # must collect the same test names.
    ids=["nonsense", "oversized", "three-parts", "other-key", "no-such-session", "other-purpose"],
)
async def test_forged_session_cookies_are_refused(app: Starlette, cookie: str) -> None:
    async with browser(app) as web:
        web.cookies.set(auth.SESSION_COOKIE, cookie, domain="newsletter.test", path="/admin")
        assert (await web.get("/admin")).status_code == 303
        answer = await web.post("/admin/logout", data={"csrf": "x"})
        assert answer.status_code == 403


async def test_a_session_past_its_expiry_is_refused(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await sign_in(web)
    await db.execute("UPDATE admin_sessions SET expires_at = now() - interval '1 second'")
    assert (await web.get("/admin")).status_code == 303


async def test_a_cookie_signed_longer_ago_than_the_session_lifetime_is_refused(
    web: httpx.AsyncClient,
) -> None:
    """The signature's own timestamp expires the cookie even if the row were kept."""
    await sign_in(web)
    session_id = "a-session-id"
    await web.get("/admin")  # the real session is valid

    class Old(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time()) - 9 * 3600

    old = Old([support.TEST_KEY], salt=auth.SESSION_SALT, sep=".").sign(session_id).decode()
    web.cookies.set(auth.SESSION_COOKIE, old, domain="newsletter.test", path="/admin")
    assert (await web.get("/admin")).status_code == 303


async def test_removing_a_token_from_admin_tokens_ends_its_sessions(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory() as (app, _), browser(app) as web:
        await sign_in(web)
        cookie = web.cookies.get(auth.SESSION_COOKIE)
    async with app_factory(admin_tokens=("another-admin-token-0123",)) as (app, _):
        async with browser(app) as web:
            web.cookies.set(auth.SESSION_COOKIE, cookie, domain="newsletter.test", path="/admin")
            assert (await web.get("/admin")).status_code == 303


async def test_sign_out_ends_the_session_and_a_replayed_cookie_stays_out(
    web: httpx.AsyncClient, app: Starlette, db: asyncpg.Connection
) -> None:
    csrf = await sign_in(web)
    cookie = web.cookies.get(auth.SESSION_COOKIE)
    answer = await web.post("/admin/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/admin/login"
    assert "max-age=0" in set_cookie(answer, auth.SESSION_COOKIE).lower()
    assert await db.fetchval("SELECT count(*) FROM admin_sessions") == 0
    assert (await web.get("/admin")).status_code == 303
    async with browser(app) as replay:
        replay.cookies.set(auth.SESSION_COOKIE, cookie, domain="newsletter.test", path="/admin")
        assert (await replay.get("/admin")).status_code == 303


async def test_concurrent_sign_ins_each_get_their_own_session(
    app: Starlette, db: asyncpg.Connection
) -> None:
    async def one() -> str:
        async with browser(app) as web:
            return await sign_in(web)

    tokens = await asyncio.gather(*(one() for _ in range(8)))
    assert len(set(tokens)) == 8
    assert await db.fetchval("SELECT count(*) FROM admin_sessions") == 8


# -- CSRF and form bodies ------------------------------------------------------------
STATE_CHANGING = [
    ("/admin/logout", {}),
    ("/admin/campaigns", {"name": "n", "subject": "s", "html": "<p>h</p>", "text": "t"}),
    ("/admin/campaigns/{id}/send", {}),
    ("/admin/campaigns/{id}/schedule", {"at": "2099-01-01T09:00"}),
    ("/admin/campaigns/{id}/test", {"to": "operator@shop.example"}),
    ("/admin/campaigns/{id}/edit", {"name": "Changed", "subject": "s", "html": "h", "text": "t"}),
    ("/admin/subscribers", {"email": "ada@example.com"}),
    ("/admin/subscribers/export", {"email": "ada@example.com"}),
    ("/admin/subscribers/erase", {"email": "ada@example.com", "confirm": "yes"}),
]


@pytest.mark.parametrize(("path", "data"), STATE_CHANGING)
async def test_forms_without_the_sessions_csrf_token_are_refused_and_change_nothing(
    app: Starlette, db: asyncpg.Connection, path: str, data: dict[str, str]
) -> None:
    subscriber = await add_subscriber(db, "ada@example.com")
    campaign = await add_campaign(db)
    path = path.format(id=campaign)
    async with browser(app) as other:
        other_csrf = await sign_in(other)
    async with browser(app) as web:
        own = await sign_in(web)
        for csrf in (None, "", "wrong", other_csrf, own + "x", own[:-1]):
            body = dict(data) if csrf is None else {**data, "csrf": csrf}
            answer = await web.post(path, content=urlencode(body), headers=FORM)
            assert answer.status_code == 403, (csrf, answer.text)
            assert "expired or did not come from this dashboard" in answer.text
        assert (await web.get("/admin")).status_code == 200  # still signed in
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 1
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 0
    assert await db.fetchval("SELECT id FROM subscribers") == subscriber
    assert await db.fetchval("SELECT count(*) FROM campaigns WHERE scheduled_at IS NOT NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert await db.fetchval("SELECT name FROM campaigns") == "Spring news"


async def test_posts_without_a_session_are_refused(app: Starlette) -> None:
    async with browser(app) as web:
        for path, data in STATE_CHANGING:
            answer = await web.post(path.format(id=1), data={**data, "csrf": "x"})
            assert answer.status_code == 403
            assert "signed out" in answer.text


async def test_form_bodies_must_be_url_encoded_utf8_and_small(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web)
    answer = await web.post("/admin/subscribers", json={"csrf": csrf, "email": "a@b.c"})
    assert answer.status_code == 415
    answer = await web.post(
        "/admin/subscribers",
        content=b"csrf=" + csrf.encode() + b"&email=%FF%FE",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 400
    answer = await web.post("/admin/subscribers", data={"csrf": csrf, "email": "a" * 20000})
    assert answer.status_code == 413
    answer = await web.post(
        "/admin/campaigns",
        data={"csrf": csrf, "name": "n", "subject": "s", "text": "t", "html": "x" * 1_100_000},
    )
    assert answer.status_code == 413


# -- pages ---------------------------------------------------------------------------
async def test_pages_carry_a_strict_csp_and_no_inline_script_or_style(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    campaign = await add_campaign(db)
    await sign_in(web)
    for path in [*PAGES, "/admin/login", f"/admin/campaigns/{campaign}/send"]:
        answer = await web.get(path, follow_redirects=True)
        assert answer.status_code == 200, path
        csp = answer.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "style-src 'self';" in csp
        assert "unsafe-inline" not in csp and "script-src" not in csp
        assert "frame-ancestors 'none'" in csp
        assert answer.headers["cache-control"] == "no-store"
        assert "<script" not in answer.text
        assert " style=" not in answer.text and "<style" not in answer.text
        assert 'name="viewport"' in answer.text


async def test_the_stylesheet_is_served_by_the_service(client: httpx.AsyncClient) -> None:
    answer = await client.get("/admin/static/admin.css")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/css")
    assert ".chart" in answer.text


async def test_overview_shows_statuses_and_days_with_confirmation_rates(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for i in range(3):
        await add_subscriber(db, f"active{i}@example.com")
    await add_subscriber(db, "waiting@example.com", status="pending")
    today = datetime.now(UTC).date()
    await db.executemany(
        "INSERT INTO list_daily (day, signups, confirmations, unsubscribes) VALUES ($1, $2, $3, $4)",
        [
            (today, 4, 2, 1),
            (today - timedelta(days=2), 8, 6, 0),
            (today - timedelta(days=40), 99, 99, 99),  # outside the period
        ],
    )
    await sign_in(web)
    page = (await web.get("/admin")).text
    assert re.search(r'id="active-count">3<', page)
    assert re.search(r'id="pending-count">1<', page)
    assert "12 sign-ups, 8 confirmations, 1 unsubscribe." in page  # singular for one
    assert "66.7 %" in page  # 8 of 12 over the period
    rows = re.findall(r'<tr><th scope="row"><time datetime="([\d-]+)">.*?</th>(.*?)</tr>', page)
    assert len(rows) == 30
    assert rows[0][0] == today.isoformat()
    assert [re.sub(r"<[^>]+>", " ", r[1]).split() for r in rows[:3]] == [
        ["4", "2", "50.0", "%", "1"],
        ["0", "0", "n/a", "0"],
        ["8", "6", "75.0", "%", "0"],
    ]
    assert '<svg class="chart"' in page and '<title id="daily-title">' in page
    # Today's date is labelled on the chart's axis.
    assert f">{today.strftime('%m-%d')}</text>" in page


@pytest.mark.parametrize(
    ("active", "signups", "expected"),
    [
        (1, 1, ["1</span> active subscriber<", "1 sign-up, 0 confirmations, 0 unsubscribes."]),
        (2, 2, ["2</span> active subscribers<", "2 sign-ups, 0 confirmations"]),
    ],
)
async def test_overview_counts_are_singular_for_one(
    web: httpx.AsyncClient, db: asyncpg.Connection, active: int, signups: int, expected: list[str]
) -> None:
    for i in range(active):
        await add_subscriber(db, f"active{i}@example.com")
    await db.execute(
        "INSERT INTO list_daily (day, signups) VALUES ((now() AT TIME ZONE 'UTC')::date, $1)",
        signups,
    )
    await sign_in(web)
    page = (await web.get("/admin")).text
    for text in expected:
        assert text in page


async def test_campaign_list_shows_sent_opens_unique_opens_and_open_rate(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    sent = await add_campaign(
        db, "Sent one", first_sent_at=datetime(2026, 5, 1, 9, 30, tzinfo=UTC), recipients=8, sent=8
    )
    await add_campaign(db, "Draft <b>one</b>")
    await db.execute(
        "INSERT INTO campaign_counts (campaign_id, dimension, key, opens, machine_opens, unique_opens)"
        " VALUES ($1, 'total', '', 10, 3, 6), ($1, 'country', 'FR', 7, 0, 0)",
        sent,
    )
    await sign_in(web)
    page = (await web.get("/admin/campaigns")).text
    assert "Draft &lt;b&gt;one&lt;/b&gt;" in page and "not sent" in page
    row = re.search(r"Sent one.*?</tr>", page, re.S).group(0)
    cells = [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    assert cells == ["2026-05-01 09:30 UTC", "8", "10", "6", "75.0 %", "3"]


async def test_unknown_campaigns_answer_404(web: httpx.AsyncClient) -> None:
    csrf = await sign_in(web)
    for campaign_id in ("999", "0", str(2**63), "99999999999999999999999"):
        assert (await web.get(f"/admin/campaigns/{campaign_id}")).status_code == 404
        assert (await web.get(f"/admin/campaigns/{campaign_id}/send")).status_code == 404
        answer = await web.post(f"/admin/campaigns/{campaign_id}/send", data={"csrf": csrf})
        assert answer.status_code == 404
    assert (await web.get("/admin/campaigns/abc")).status_code == 404


async def test_campaign_page_shows_the_three_charts_tables_and_machine_note(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    campaign = await add_campaign(
        db, first_sent_at=datetime.now(UTC) - timedelta(hours=5), recipients=4, sent=4
    )
    await db.execute(
        "INSERT INTO campaign_counts (campaign_id, dimension, key, opens, machine_opens, unique_opens)"
        " VALUES ($1, 'total', '', 6, 2, 3),"
        " ($1, 'hour', '0', 5, 2, 0), ($1, 'hour', '3', 2, 0, 0),"
        " ($1, 'country', 'FR', 4, 0, 0), ($1, 'country', 'DE', 2, 0, 0),"
        " ($1, 'client', 'Thunderbird', 5, 0, 0), ($1, 'client', 'Apple Mail', 1, 0, 0)",
        campaign,
    )
    await sign_in(web)
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    for chart in ("hours", "countries", "clients"):
        assert f'<title id="{chart}-title">' in page
        assert f'id="{chart}-table"' in page
    assert re.search(r'id="open-count">6<', page)
    assert re.search(r'id="unique-count">3<', page) and "75.0 %" in page
    assert re.search(r'id="machine-count">2<', page)
    assert "Machine opens are fetches of the tracking image" in page
    assert ">Opens by people</th>" in page and "People</th>" not in page
    hours = re.search(r'id="hours-table">(.*?)</table>', page, re.S).group(1)
    hour_rows = [re.sub(r"<[^>]+>", " ", r).split() for r in re.findall(r"<tr>(.*?)</tr>", hours)]
    # Hour 3 (2 opens) is under STATS_MIN_BUCKET: shown only as "other".
    assert hour_rows[1:] == [
        ["0-1", "h", "3", "2"],
        ["other", "hours", "(each", "under", "5", "opens)", "2", "0"],
    ]
    countries = re.search(r'id="countries-table">(.*?)</table>', page, re.S).group(1)
    # FR (4) and DE (2) are each under STATS_MIN_BUCKET: neither is named.
    assert "FR" not in countries and "DE" not in countries
    # Each "other" bucket says what it holds, as the hours' does.
    assert "other countries (each under 5 opens)" in countries
    clients = re.search(r'id="clients-table">(.*?)</table>', page, re.S).group(1)
    assert "Thunderbird" in clients and "Apple Mail" not in clients
    assert "other mail clients (each under 5 opens)" in clients


async def test_campaign_page_shows_anonymous_opens_beside_unique_opens_with_the_reason(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    campaign = await add_campaign(
        db, first_sent_at=datetime.now(UTC) - timedelta(hours=1), recipients=5, sent=5
    )
    await add_counts(
        db,
        campaign,
        ("total", "", 7, 0, 2),
        ("tracking", "personal", 3, 0, 2),
        ("tracking", "anonymous", 4, 0, 0),
    )
    await sign_in(web)
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    assert re.search(r'id="unique-count">2</span> unique opens', page)
    assert re.search(r'id="anonymous-count">4</span> anonymous opens', page)
    note = re.search(r'id="unique-note">(.*?)</p>', page, re.S).group(1)
    assert "only people who agreed" in note and "counted anonymously" in note
    assert note.count(".") == 1  # one sentence


async def test_campaign_cards_are_singular_for_one(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    campaign = await add_campaign(db, recipients=1, sent=1)
    await add_counts(db, campaign, ("total", "", 1, 1, 1), ("tracking", "anonymous", 1, 0, 0))
    await sign_in(web)
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    for card in ("open-count", "unique-count", "anonymous-count", "machine-count"):
        singular = rf'id="{card}">1</span> (unique |anonymous |machine )?open[< ]'
        assert re.search(singular, page), card


async def test_campaign_page_reloads_itself_while_emails_wait_and_stops_when_sent(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    subscriber = await add_subscriber(db, "ada@example.com")
    campaign = await add_campaign(db, recipients=1, sent=0)
    # A job the worker will not take yet: the page must show the send in progress.
    await db.execute(
        "INSERT INTO outbox (kind, subscriber_id, campaign_id, run_at)"
        " VALUES ('campaign', $1, $2, now() + interval '1 hour')",
        subscriber,
        campaign,
    )
    await sign_in(web)
    web.cookies.set("queued_notice", "1", domain="newsletter.test")
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    assert '<meta http-equiv="refresh" content="3">' in page
    assert "1 email queued." in page
    sending = re.search(r'id="sending">(.*?)</div>', page, re.S).group(1)
    assert "<strong>0</strong> of 1 sent" in sending
    assert f'<a href="/admin/campaigns/{campaign}">Reload now</a>' in sending
    assert '<progress max="1" value="0">' in sending

    await db.execute("DELETE FROM outbox")
    await db.execute("UPDATE campaigns SET sent = 1")
    page = (await web.get(f"/admin/campaigns/{campaign}")).text
    assert 'http-equiv="refresh"' not in page and 'id="sending"' not in page
    assert re.search(r'id="sent-count">1<', page)


async def test_an_invalid_field_is_outlined_over_the_plain_input_rule(
    client: httpx.AsyncClient,
) -> None:
    """`input[type=text]` (0,1,1) beat `[aria-invalid]` (0,1,0): the rule must match
    the element and come later with at least the same specificity."""
    css = (await client.get("/admin/static/admin.css")).text
    plain = css.index("input[type=text], input[type=email]")
    invalid = css.index(':is(input, textarea, select)[aria-invalid="true"]')
    assert invalid > plain
    rule = css[invalid : css.index("}", invalid)]
    assert "border" in rule and "#b42318" in rule


async def test_the_sign_in_page_says_where_the_dev_token_is_only_in_dev_mode(
    app_factory: Callable[..., Any], web: httpx.AsyncClient
) -> None:
    assert 'id="dev-token"' not in (await web.get("/admin/login")).text
    catcher = f"smtp://127.0.0.1:{support.free_port()}"
    async with app_factory(dev=True, smtp_url=catcher) as (app, _), browser(app) as dev:
        page = (await dev.get("/admin/login")).text
    hint = re.search(r'id="dev-token">(.*?)</p>', page, re.S).group(1)
    assert ".newsletter/secrets.json" in hint and "admin token" in hint


# -- creating and sending ------------------------------------------------------------
async def test_a_campaign_is_created_from_the_form(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    csrf = await sign_in(web)
    form = await web.get("/admin/campaigns/new")
    assert form.status_code == 200 and field(form.text, "csrf") == csrf
    answer = await web.post(
        "/admin/campaigns",
        data={
            "csrf": csrf,
            "name": "June",
            "subject": "June news",
            "html": "<p>Hello {{ name }}</p>",
            "text": "Hello {{ name }}",
        },
    )
    assert answer.status_code == 303
    row = await db.fetchrow("SELECT id, name, subject, html FROM campaigns")
    assert answer.headers["location"] == f"/admin/campaigns/{row['id']}"
    assert (row["name"], row["subject"], row["html"]) == (
        "June",
        "June news",
        "<p>Hello {{ name }}</p>",
    )


async def test_an_invalid_campaign_form_shows_field_errors_and_keeps_the_values(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    csrf = await sign_in(web)
    answer = await web.post(
        "/admin/campaigns",
        data={"csrf": csrf, "name": "<b>x</b>", "subject": "", "html": "{{ oops", "text": "t"},
    )
    assert answer.status_code == 422
    assert 'id="subject-error"' in answer.text and 'id="html-error"' in answer.text
    assert "&lt;b&gt;x&lt;/b&gt;" in answer.text  # kept, escaped
    assert await db.fetchval("SELECT count(*) FROM campaigns") == 0


async def test_sending_shows_the_recipient_count_first_then_queues_once(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for i in range(3):
        await add_subscriber(db, f"reader{i}@example.com")
    await add_subscriber(db, "pending@example.com", status="pending")
    campaign = await add_campaign(db)
    csrf = await sign_in(web)
    step = await web.get(f"/admin/campaigns/{campaign}/send")
    assert step.status_code == 200
    assert "<strong>3</strong> active subscribers" in step.text
    assert "Send to 3 subscribers" in step.text
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0  # the GET changes nothing

    answer = await web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf})
    assert answer.status_code == 303
    # The notice is said once: not in the URL, gone on reload.
    assert answer.headers["location"] == f"/admin/campaigns/{campaign}"
    assert "3 emails queued." in (await web.get(answer.headers["location"])).text
    assert "emails queued." not in (await web.get(answer.headers["location"])).text
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 3

    again = await web.get(f"/admin/campaigns/{campaign}/send")
    assert "3 of the people still on the list already received" in again.text
    assert "Send to 0 subscribers" in again.text
    answer = await web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf})
    assert "0 emails queued." in (await web.get(answer.headers["location"])).text
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 3


async def test_concurrent_sends_from_the_dashboard_queue_each_subscriber_once(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    for i in range(20):
        await add_subscriber(db, f"reader{i}@example.com")
    campaign = await add_campaign(db)
    csrf = await sign_in(web)
    answers = await asyncio.gather(
        *(web.post(f"/admin/campaigns/{campaign}/send", data={"csrf": csrf}) for _ in range(6))
    )
    queued = [int(a.cookies["queued_notice"]) for a in answers]
    assert sum(queued) == 20
    assert await db.fetchval("SELECT count(*) FROM deliveries") == 20


# -- access and erasure requests -----------------------------------------------------
async def test_lookup_and_export_of_an_address(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await add_subscriber(db, "ada@example.com", name="Ada <L>")
    csrf = await sign_in(web)
    page = await web.post("/admin/subscribers", data={"csrf": csrf, "email": "ada@example.com"})
    assert page.status_code == 200
    assert "ada@example.com" in page.text and "Ada &lt;L&gt;" in page.text
    assert 'action="/admin/subscribers/erase"' in page.text
    # A readable page, not raw JSON: the record as labelled values, lists as tables.
    assert "<pre" not in page.text and '"email":' not in page.text
    record = re.search(r'id="export-subscriber">(.*?)</section>', page.text, re.S).group(1)
    assert "<dt>Email</dt><dd>ada@example.com</dd>" in record
    assert "<dt>Name</dt><dd>Ada &lt;L&gt;</dd>" in record
    assert "<dt>Tracking consent</dt><dd>no</dd>" in record
    assert re.search(r"<dt>Created at</dt><dd>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</dd>", record)
    assert 'id="download-json"' in page.text  # the JSON download beside it
    download = await web.post(
        "/admin/subscribers/export", data={"csrf": csrf, "email": "ada@example.com"}
    )
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/json"
    assert download.headers["content-disposition"].startswith("attachment")
    assert download.json()["subscriber"]["email"] == "ada@example.com"

    missing = await web.post("/admin/subscribers", data={"csrf": csrf, "email": "no@example.com"})
    assert 'id="not-found"' in missing.text
    none = await web.post(
        "/admin/subscribers/export", data={"csrf": csrf, "email": "no@example.com"}
    )
    assert none.status_code == 404


@pytest.mark.parametrize("email", ["", "   ", "not-an-address", "a\r\nb@example.com", "x" * 321])
async def test_lookup_of_a_malformed_address_says_what_to_enter(
    web: httpx.AsyncClient, email: str
) -> None:
    csrf = await sign_in(web)
    for path in ("/admin/subscribers", "/admin/subscribers/export", "/admin/subscribers/erase"):
        answer = await web.post(path, data={"csrf": csrf, "email": email, "confirm": "yes"})
        assert answer.status_code == 400
        assert "Enter an email address" in answer.text


async def test_erasure_from_the_dashboard_asks_first_then_deletes_everything(
    web: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    subscriber = await add_subscriber(db, "ada@example.com")
    campaign = await add_campaign(db, recipients=1, sent=1)
    await db.execute(
        "INSERT INTO deliveries (campaign_id, subscriber_id, sent_at) VALUES ($1, $2, now())",
        campaign,
        subscriber,
    )
    await db.execute(
        "INSERT INTO consent_events (subscriber_id, kind) VALUES ($1, 'signup'), ($1, 'confirm')",
        subscriber,
    )
    csrf = await sign_in(web)
    ask = await web.post(
        "/admin/subscribers/erase", data={"csrf": csrf, "email": "ada@example.com"}
    )
    assert ask.status_code == 200
    assert 'id="confirm-erase"' in ask.text and field(ask.text, "confirm") == "yes"
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1

    done = await web.post(
        "/admin/subscribers/erase",
        data={"csrf": csrf, "email": "ada@example.com", "confirm": "yes"},
    )
    assert done.status_code == 200 and "has been deleted" in done.text
    for table in ("subscribers", "consent_events", "deliveries"):
        assert await db.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608
    assert await db.fetchval("SELECT sent FROM campaigns") == 1  # anonymous counts stay

    replay = await web.post(
        "/admin/subscribers/erase",
        data={"csrf": csrf, "email": "ada@example.com", "confirm": "yes"},
    )
    assert replay.status_code == 200 and "Nothing is stored" in replay.text


# -- demo page -----------------------------------------------------------------------
async def test_the_demo_signup_page_is_served_outside_dev_only_when_enabled(
    app_factory: Callable[..., Any],
) -> None:
    async with app_factory() as (_, client):
        assert (await client.get("/")).status_code == 404
    async with app_factory(demo_page=True) as (_, client):
        page = await client.get("/")
        assert page.status_code == 200
        assert 'action="/subscribe"' in page.text


def test_session_ids_are_stored_hashed() -> None:
    assert auth._sha256("x") == hashlib.sha256(b"x").digest()


async def test_a_locked_out_sign_in_says_how_long_to_wait(
    app_factory: Callable[..., Any],
) -> None:
    # The limit's windows are fixed (multiples of 900 s): start well inside one, so that
    # the three attempts are counted together.
    left = 900 - time.time() % 900
    if left < 15:
        await asyncio.sleep(left + 0.5)
    async with (
        app_factory(admin_auth_failures=2, admin_auth_window=900) as (app, _),
        browser(app) as client,
    ):
        form = await client.get("/admin/login")
        answer = form
        for _ in range(3):
            answer = await client.post(
                "/admin/login",
                data={"login_token": field(answer.text, "login_token"), "token": "wrong"},
            )
        assert answer.status_code == 429
        wait = int(answer.headers["retry-after"])
        assert 0 < wait <= 900
        minutes = -(-wait // 60)
        said = "1 minute" if minutes == 1 else f"{minutes} minutes"  # the last minute too
        assert f"Please try again in {said}." in answer.text
