import asyncio
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from service.web import ratelimit
from tests import support
from tests.conftest import CLIENT_IP
from tests.signup_helpers import (
    outbox_empty,
    subscribe,
    subscribe_json,
    table_counts,
    wait_until,
)


def _answer(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = sorted((k, v) for k, v in response.headers.items() if k.lower() != "date")
    return response.status_code, headers, response.content


async def test_form_signup_stores_pending_row_evidence_and_sends_one_email(
    client, db, smtp
) -> None:
    response = await subscribe(client, "Ada@Example.COM", name="Ada", source="footer", website="")
    assert response.status_code == 200
    assert "Check your inbox" in response.text
    row = await db.fetchrow("SELECT * FROM subscribers")
    assert (row["email"], row["name"], row["status"]) == ("Ada@example.com", "Ada", "pending")
    event = await db.fetchrow("SELECT * FROM consent_events")
    assert event["kind"] == "signup"
    assert event["ip"] == "198.51.100.0"  # IP_MODE truncated
    assert event["source"] == "footer"
    assert event["consent_text_version"] == "v1"
    assert event["user_agent"].startswith("python-httpx")
    assert await db.fetchval("SELECT signups FROM list_daily") == 1
    [message] = await smtp.wait_for(1)
    assert message.recipients == ["Ada@example.com"]
    await wait_until(lambda: db.fetchval("SELECT confirm_sent_at IS NOT NULL FROM subscribers"))
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_json_signup_answers_202_pending(client, db, smtp) -> None:
    response = await subscribe_json(client, {"email": "bob@example.com"})
    assert response.status_code == 202
    assert response.json() == {"status": "pending"}
    await smtp.wait_for(1)


async def test_form_signup_redirects_to_thank_you_url_when_configured(app_factory) -> None:
    async with app_factory(thank_you_url="https://www.example.com/thanks") as (_app, client):
        response = await subscribe(client, "carol@example.com")
    assert response.status_code == 303
    assert response.headers["location"] == "https://www.example.com/thanks"


@pytest.mark.parametrize("as_json", [False, True])
async def test_new_pending_and_confirmed_addresses_get_byte_identical_answers(
    client, db, smtp, as_json
) -> None:
    async def post(address: str) -> httpx.Response:
        if as_json:
            return await subscribe_json(client, {"email": address})
        return await subscribe(client, address)

    await db.execute(
        "INSERT INTO subscribers (email, status, confirmed_at) VALUES ('old@example.com', 'active', now())"
    )
    new = await post("new@example.com")
    pending = await post("new@example.com")
    confirmed = await post("old@example.com")
    honeypot = await client.post(
        "/subscribe",
        **(
            {"json": {"email": "x@example.com", "website": "spam"}}
            if as_json
            else {"data": {"email": "x@example.com", "website": "spam"}}
        ),
    )
    assert _answer(new) == _answer(pending) == _answer(confirmed) == _answer(honeypot)


async def test_confirmed_address_gets_no_new_email_and_no_change(client, db, smtp) -> None:
    await db.execute(
        "INSERT INTO subscribers (email, name, status, confirmed_at)"
        " VALUES ('old@example.com', 'Old', 'active', now())"
    )
    before = await table_counts(db)
    await subscribe(client, "OLD@example.com", name="Someone else")
    # An email is only ever sent from an outbox job, written in the sign-up's transaction.
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert smtp.messages == []
    # The IP's count and the address's allowance: a subscribed address spends it as a new
    # one does, so the three cases write the same rows (and take the same time).
    assert await table_counts(db) == {**before, "rate_limits": before["rate_limits"] + 2}
    assert await db.fetchval("SELECT name FROM subscribers") == "Old"


async def test_filled_honeypot_stores_nothing_and_sends_nothing(client, db, smtp) -> None:
    before = await table_counts(db)
    response = await subscribe(client, "bot@example.com", website="http://spam.example")
    assert response.status_code == 200
    assert await table_counts(db) == before  # no outbox job: no email can follow
    assert smtp.messages == []


async def test_honeypot_field_name_is_a_setting(app_factory, db) -> None:
    async with app_factory(honeypot_field="homepage") as (_app, client):
        await subscribe(client, "bot@example.com", homepage="x")
        await subscribe(client, "person@example.com", website="not a honeypot here")
    assert await db.fetchval("SELECT array_agg(email) FROM subscribers") == ["person@example.com"]


@pytest.mark.parametrize(
    "address",
    [
        "plainaddress",
        "@example.com",
        "a@b",
        "a@@example.com",
        "a b@example.com",
        "a@example..com",
        "a@-example.com",
        "x" * 250 + "@example.com",
        "a@" + "b" * 300 + ".com",
        "a\r\nBcc: victim@example.com@example.com",
        "<a@example.com>",
        "a@example.com, b@example.com",
    ],
)
async def test_malformed_addresses_are_refused_with_a_field_message_and_nothing_stored(
    client, db, address
) -> None:
    before = await table_counts(db)
    response = await subscribe_json(client, {"email": address})
    assert response.status_code == 422
    assert set(response.json()["errors"]) == {"email"}
    form = await subscribe(client, address)
    assert form.status_code == 400
    assert form.headers["content-type"].startswith("text/html")
    assert await table_counts(db) == before


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("jörg@bücher.example", "jörg@bücher.example"),
        ("user@BÜCHER.example", "user@bücher.example"),
        ("用户@例子.广告", "用户@例子.广告"),
        ("user@xn--bcher-kva.example", "user@bücher.example"),
    ],
)
async def test_internationalised_addresses_are_accepted_and_normalised(
    client, db, typed, stored
) -> None:
    response = await subscribe_json(client, {"email": typed})
    assert response.status_code == 202
    assert await db.fetchval("SELECT email FROM subscribers") == stored


async def test_idn_domain_is_mailed_through_its_ascii_form(client, smtp) -> None:
    await subscribe_json(client, {"email": "user@bücher.example"})
    [message] = await smtp.wait_for(1)
    assert message.recipients == ["user@xn--bcher-kva.example"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"name": "Ada"},
        {"email": ""},
        {"email": "   "},
        {"email": None},
        {"email": 42},
        {"email": ["a@example.com"]},
        {"email": {"x": "a@example.com"}},
    ],
)
async def test_missing_or_non_text_email_is_422(client, db, payload) -> None:
    before = await table_counts(db)
    response = await subscribe_json(client, payload)
    assert response.status_code == 422
    assert "email" in response.json()["errors"]
    assert await table_counts(db) == before


@pytest.mark.parametrize(
    "body",
    [b"{", b"not json", b"[1, 2]", b'"a@example.com"', b"null", b"\xff\xfe", b""],
)
async def test_broken_json_is_400_and_stores_nothing(client, db, body) -> None:
    before = await table_counts(db)
    response = await client.post(
        "/subscribe", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "body" in response.json()["errors"]
    assert await table_counts(db) == before


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/xml", "", "application/jsonx", "text/html"]
)
async def test_wrong_content_type_is_415(client, db, content_type) -> None:
    response = await client.post(
        "/subscribe",
        content=b'{"email": "a@example.com"}',
        headers={"content-type": content_type},
    )
    assert response.status_code == 415
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


@pytest.mark.parametrize(
    ("name", "field_error"),
    [
        ("Ada\r\nBcc: victim@example.com", True),
        ("Ada\nLovelace", True),
        ("Ada\rLovelace", True),
        ("Ada\x00", True),
        ("Ada\u2028Lovelace", True),
        ("A" * 101, True),
        ("A" * 100, False),
        ("  Ada Lovelace  ", False),
        ("Zoë Ünal-Øster", False),
    ],
)
async def test_name_is_length_limited_and_line_breaks_are_refused(
    client, db, name, field_error
) -> None:
    response = await subscribe_json(client, {"email": "ada@example.com", "name": name})
    if field_error:
        assert response.status_code == 422
        assert set(response.json()["errors"]) == {"name"}
        assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    else:
        assert response.status_code == 202
        assert await db.fetchval("SELECT name FROM subscribers") == name.strip()


async def test_body_over_the_limit_is_413_by_content_length(client, db) -> None:
    big = "x" * 9000
    response = await subscribe(client, "a@example.com", name=big)
    assert response.status_code == 413
    response = await subscribe_json(client, {"email": "a@example.com", "pad": big})
    assert response.status_code == 413
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_streamed_body_over_the_limit_is_413_without_reading_it_all(client, db) -> None:
    sent = 0

    async def chunks():
        nonlocal sent
        for _ in range(1000):  # 1 MB offered in 1 KB chunks, no Content-Length
            sent += 1
            yield b"email=a%40example.com&pad=" + b"x" * 1000

    response = await client.post(
        "/subscribe",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413
    assert "content-length" not in response.request.headers
    assert sent < 100  # stopped after the limit, not at the end of the body
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0


async def test_max_body_bytes_is_a_setting(app_factory) -> None:
    async with app_factory(max_body_bytes=2048) as (_app, client):
        response = await subscribe(client, "a@example.com", name="x" * 2100)
    assert response.status_code == 413


async def test_multipart_form_is_accepted_but_file_uploads_are_refused(client, db) -> None:
    response = await client.post(
        "/subscribe", data={"email": "m@example.com"}, files={"x": ("f.txt", b"data")}
    )
    assert response.status_code == 400
    response = await client.post(
        "/subscribe",
        content=b'--b\r\nContent-Disposition: form-data; name="email"\r\n\r\nm@example.com\r\n--b--\r\n',
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 200
    assert await db.fetchval("SELECT email FROM subscribers") == "m@example.com"


async def test_get_on_subscribe_is_405(client) -> None:
    assert (await client.get("/subscribe")).status_code == 405


async def test_the_tracking_checkbox_is_only_a_wish_that_grants_no_consent(client, db) -> None:
    """Whoever fills in a form can type anyone's address: the tick is shown to the
    person on the confirmation page, and only their confirming request grants it."""
    await subscribe(client, "t@example.com", tracking="1")
    await subscribe(client, "n@example.com")
    rows = await db.fetch(
        "SELECT email, tracking_requested, tracking_consent FROM subscribers ORDER BY email"
    )
    assert [tuple(r) for r in rows] == [
        ("n@example.com", False, False),
        ("t@example.com", True, False),
    ]
    kinds = await db.fetchval(
        "SELECT array_agg(kind ORDER BY kind) FROM consent_events e JOIN subscribers s"
        " ON s.id = e.subscriber_id WHERE s.email = 't@example.com'"
    )
    assert kinds == ["signup"]


async def test_tracking_checkbox_is_ignored_outside_consent_mode(app_factory, db) -> None:
    async with app_factory(tracking_mode="notice") as (_app, client):
        await subscribe_json(client, {"email": "t@example.com", "tracking": True})
    assert await db.fetchval("SELECT tracking_consent FROM subscribers") is False
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 1


async def test_referer_is_the_source_when_the_form_sends_none(client, db) -> None:
    await client.post(
        "/subscribe",
        data={"email": "r@example.com"},
        headers={"referer": "https://www.example.com/blog/post?utm=x&email=r@example.com"},
    )
    assert await db.fetchval("SELECT source FROM consent_events") == (
        "https://www.example.com/blog/post"
    )


async def test_ip_mode_none_stores_no_ip(app_factory, db) -> None:
    async with app_factory(ip_mode="none") as (_app, client):
        await subscribe(client, "ip@example.com")
    assert await db.fetchval("SELECT ip FROM consent_events") is None


async def test_signups_per_ip_over_the_hourly_limit_get_429_with_retry_after(
    app_factory, db, smtp
) -> None:
    async with app_factory(rate_signup_per_ip_hour=3) as (_app, client):
        answers = [await subscribe_json(client, {"email": f"p{i}@example.com"}) for i in range(5)]
    assert [a.status_code for a in answers] == [202, 202, 202, 429, 429]
    retry_after = int(answers[3].headers["retry-after"])
    assert 1 <= retry_after <= 3600
    assert "errors" in answers[3].json()
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 3
    key = await db.fetchval("SELECT key FROM rate_limits WHERE scope = 'ip'")
    assert CLIENT_IP.encode() not in key  # an HMAC, not the address itself


async def test_rate_limited_form_post_gets_an_html_429(app_factory) -> None:
    async with app_factory(rate_signup_per_ip_hour=1) as (_app, client):
        await subscribe(client, "a@example.com")
        response = await subscribe(client, "b@example.com")
    assert response.status_code == 429
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["retry-after"]


async def test_address_gets_no_second_email_within_the_minimum_interval(client, db, smtp) -> None:
    await subscribe(client, "a@example.com")
    await smtp.wait_for(1)
    await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    second = await subscribe(client, "a@example.com")
    assert second.status_code == 200
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0  # no second job queued
    assert len(smtp.messages) == 1
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 2  # both requests


async def test_address_gets_at_most_the_daily_number_of_emails(app_factory, db, smtp) -> None:
    async with app_factory(rate_confirm_min_interval=0, rate_confirm_per_day=3) as (_app, client):
        for _ in range(5):
            await subscribe(client, "a@example.com")
            # A job is deleted after the relay's 250, so its message is in by then.
            await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    assert len(smtp.messages) == 3
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_fifty_concurrent_signups_of_one_address_make_one_subscriber_and_one_email(
    app_factory, db, smtp
) -> None:
    async with app_factory(rate_signup_per_ip_hour=1000, db_pool_max=10) as (_app, client):
        answers = await asyncio.gather(
            *(subscribe_json(client, {"email": "same@example.com"}) for _ in range(50))
        )
        assert {a.status_code for a in answers} == {202}
        assert len({a.content for a in answers}) == 1
        await smtp.wait_for(1)
        await wait_until(lambda: db.fetchval("SELECT count(*) = 0 FROM outbox"))
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert len(smtp.messages) == 1
    assert await db.fetchval("SELECT signups FROM list_daily") == 1
    assert await db.fetchval("SELECT count(*) FROM consent_events") == 50


async def test_concurrent_signups_of_different_addresses_each_get_one_email(
    app_factory, db, smtp
) -> None:
    async with app_factory(rate_signup_per_ip_hour=1000) as (_app, client):
        answers = await asyncio.gather(
            *(subscribe_json(client, {"email": f"u{i}@example.com"}) for i in range(30))
        )
        assert {a.status_code for a in answers} == {202}
        await smtp.wait_for(30)
    assert sorted(m.to for m in smtp.messages) == sorted(f"u{i}@example.com" for i in range(30))
    assert await db.fetchval("SELECT signups FROM list_daily") == 30


async def test_database_down_answers_503_with_retry_after_never_500(
    app_factory, db, database_url
) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    async with app_factory() as (_app, client):
        admin = await asyncpg.connect(support.with_database(database_url, "postgres"))
        try:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid NOT IN (pg_backend_pid(), $2)",
                name,
                db.get_server_pid(),
            )
            json_answer = await subscribe_json(client, {"email": "down@example.com"})
            form_answer = await subscribe(client, "down@example.com")
            form = {"content-type": "application/x-www-form-urlencoded"}
            ticked = await client.post(  # the topics cannot be read: the ticks ride along
                "/subscribe", content="email=down%40example.com&topics=offers", headers=form
            )
            bad = await client.post(  # refused before the database: still no 500
                "/subscribe", content="email=not-an-address&topics=offers", headers=form
            )
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await admin.close()
        assert json_answer.status_code == 503
        assert json_answer.headers["retry-after"]
        assert form_answer.status_code == 503
        assert form_answer.headers["content-type"].startswith("text/html")
        for answer, status in ((ticked, 503), (bad, 400)):
            assert answer.status_code == status, answer.text
            assert '<input type="hidden" name="topics" value="offers">' in answer.text
        # and it recovers once the database is back
        back = await wait_until(lambda: _status_is(client, "back@example.com", 202), timeout=10)
        assert back


async def _status_is(client, email: str, status: int) -> bool:
    return (await subscribe_json(client, {"email": email})).status_code == status


async def test_cors_preflight_is_answered_for_configured_origins_only(app_factory) -> None:
    async with app_factory(cors_origins=("https://www.example.com",)) as (_app, client):
        allowed = await client.options(
            "/subscribe",
            headers={
                "origin": "https://www.example.com",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        refused = await client.options(
            "/subscribe",
            headers={
                "origin": "https://evil.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            },
        )
        post = await subscribe_json(
            client, {"email": "c@example.com"}, headers={"origin": "https://www.example.com"}
        )
        other = await subscribe_json(
            client, {"email": "d@example.com"}, headers={"origin": "https://evil.example"}
        )
        plain_options = await client.options("/subscribe")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://www.example.com"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert post.headers["access-control-allow-origin"] == "https://www.example.com"
    assert "access-control-allow-origin" not in other.headers
    assert plain_options.status_code == 405


async def test_without_cors_origins_there_is_no_cors_at_all(client) -> None:
    preflight = await client.options(
        "/subscribe",
        headers={"origin": "https://www.example.com", "access-control-request-method": "POST"},
    )
    assert preflight.status_code == 405
    post = await subscribe_json(
        client, {"email": "c@example.com"}, headers={"origin": "https://www.example.com"}
    )
    assert "access-control-allow-origin" not in post.headers


async def test_pending_signup_again_refreshes_the_row_and_records_new_evidence(
    app_factory, db, smtp
) -> None:
    async with app_factory(rate_confirm_min_interval=0) as (_app, client):
        await subscribe(client, "again@example.com", name="First")
        await smtp.wait_for(1)
        # The worker deletes the job just after the relay's 250: until then a sign-up
        # finds the email still queued and queues no second one.
        await wait_until(lambda: outbox_empty(db))
        await db.execute("UPDATE subscribers SET signup_at = now() - interval '1 hour'")
        await subscribe(client, "again@example.com", name="Second")
        await smtp.wait_for(2)
    row = await db.fetchrow(
        "SELECT name, signup_at > now() - interval '1 minute' AS fresh FROM subscribers"
    )
    assert row["name"] == "Second" and row["fresh"]
    assert await db.fetchval("SELECT signups FROM list_daily") == 1


async def test_address_rate_limit_rows_are_keyed_by_hmac_and_purged_when_old(
    client, db, settings
) -> None:
    await subscribe(client, "k@example.com")
    key = await db.fetchval("SELECT key FROM rate_limits WHERE scope = 'address'")
    day_key = await db.fetchval("SELECT key FROM rate_limit_keys")
    assert key == ratelimit.address_key(day_key, "K@Example.com")
    # Today's windows are open: nothing goes.
    assert await ratelimit.purge_expired(db) == 0
    # Once the day is over, its rows and its key go.
    await db.execute("UPDATE rate_limits SET window_start = window_start - interval '1 day'")
    await db.execute("UPDATE rate_limit_keys SET day = day - 1")
    assert await ratelimit.purge_expired(db) == 2
    assert await db.fetchval("SELECT count(*) FROM rate_limits") == 0
    assert await db.fetchval("SELECT count(*) FROM rate_limit_keys") == 0


async def test_signup_metrics_count_outcomes_without_personal_labels(client, app) -> None:
    await subscribe(client, "m@example.com")
    await subscribe(client, "bot@example.com", website="x")
    await subscribe(client, "broken")
    text = (await client.get("/metrics")).text
    assert 'signups_total{outcome="new"} 1.0' in text
    assert 'signups_total{outcome="honeypot"} 1.0' in text
    assert 'signups_total{outcome="invalid"} 1.0' in text
    assert "example.com" not in text
