import asyncio
import base64
import signal

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.tracking.pixel import GIF
from tests import support
from tests.pixel_support import CHROME, TOKENS, pixel_path, seed, wait_for_count

NO_STORE = "no-store, no-cache, must-revalidate, max-age=0"


def client_from(app, ip: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=support.PUBLIC_URL)


def assert_gif(response: httpx.Response, body: bool = True) -> None:
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.headers["cache-control"] == NO_STORE
    assert response.headers["content-length"] == "43"
    if body:
        assert response.content == GIF


def test_gif_is_the_43_byte_transparent_pixel() -> None:
    assert len(GIF) == 43 and GIF.startswith(b"GIF89a") and GIF.endswith(b";")
    assert GIF == base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")


async def test_valid_open_answers_the_gif_and_is_recorded_before_the_answer(
    app_factory, db
) -> None:
    campaign_id, (subscriber_id, *_) = await seed(db, 2)
    async with app_factory() as (_app, client):
        response = await client.get(
            pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME}
        )
        assert_gif(response)
        row = await db.fetchrow(
            "SELECT * FROM opens_readable"
        )  # no polling: wait mode committed it
    assert row["subscriber_id"] == subscriber_id and row["campaign_id"] == campaign_id
    assert (row["client"], row["os"], row["machine_reason"]) == ("Chrome", "Windows", None)
    assert row["user_agent"] == CHROME
    assert row["ip"] == "198.51.100.0"  # truncated by default
    first = await db.fetchval(
        "SELECT first_open_at FROM deliveries WHERE subscriber_id = $1", subscriber_id
    )
    assert first == row["at"]
    total = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'total'")
    assert (total["opens"], total["unique_opens"], total["machine_opens"]) == (1, 1, 0)


async def test_head_answers_the_same_headers_and_records_nothing(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory() as (_app, client):
        response = await client.head(pixel_path(subscriber_id, campaign_id))
        assert_gif(response, body=False)
        assert response.content == b""
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await db.fetchval("SELECT count(*) FROM campaign_counts") == 0


@pytest.mark.parametrize(
    "token",
    [
        "forged",
        "1-1.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "x" * 5000,
        "%00%ff",
        "..%2F..%2Fetc%2Fpasswd",
        TOKENS.unsubscribe(1),  # right key, wrong purpose
        TOKENS.pixel(1, 1)[:-1] + "A",
        "a/b/c",  # a slash: still the pixel's route, not a 404
        "",  # /o/.gif
        TOKENS.pixel(1, 1)[:-1] + "%3D",  # a padded signature
    ],
)
async def test_forged_malformed_and_oversized_tokens_get_the_gif_and_record_nothing(
    app_factory, db, token
) -> None:
    await seed(db, 1)
    async with app_factory() as (_app, client):
        assert_gif(await client.get(f"/o/{token}.gif"))
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await db.fetchval("SELECT count(*) FROM campaign_counts") == 0


async def test_token_signed_with_an_old_key_still_records(app_factory, db) -> None:
    from service.tokens import Tokens

    campaign_id, (subscriber_id,) = await seed(db, 1)
    old = Tokens((support.OLD_TEST_KEY,), 60).pixel(subscriber_id, campaign_id)
    async with app_factory(secret_keys=(support.TEST_KEY, support.OLD_TEST_KEY)) as (_a, client):
        assert_gif(await client.get(f"/o/{old}.gif"))
    assert await db.fetchval("SELECT count(*) FROM opens") == 1


@given(st.text(alphabet="/o.gifbench-naive%x", max_size=30))
def test_the_short_way_in_matches_exactly_what_starlettes_route_matches(path: str) -> None:
    """The app matches the pixel by prefix and suffix instead of the route's regex; both
    must agree on every path, and on the token they take out of it."""
    from starlette.routing import Match

    from service.tracking.pixel import route

    pixel_route = route()
    path = "/" + path
    match, child = pixel_route.matches({"type": "http", "path": path, "method": "GET"})
    if match is Match.FULL:
        assert pixel_route.token(path) == child["path_params"]["token"]
    else:
        assert pixel_route.token(path) is None


async def test_other_methods_are_refused_without_a_500(client) -> None:
    path = pixel_path(1, 1)
    assert (await client.post(path)).status_code == 405
    assert (await client.delete(path)).status_code == 405


async def test_erased_subscriber_and_unknown_campaign_get_the_gif_and_leave_no_trace(
    app_factory, db
) -> None:
    campaign_id, (gone, kept) = await seed(db, 2)
    await db.execute("DELETE FROM subscribers WHERE id = $1", gone)
    async with app_factory() as (_app, client):
        assert_gif(await client.get(pixel_path(gone, campaign_id)))
        assert_gif(await client.get(pixel_path(kept, campaign_id + 1000)))
        assert_gif(await client.get(pixel_path(10**12, campaign_id)))
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    assert await db.fetchval("SELECT count(*) FROM campaign_counts") == 0


async def test_second_open_counts_as_an_open_but_not_as_a_unique_open(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory() as (_app, client):
        for _ in range(3):
            await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
    total = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'total'")
    assert (total["opens"], total["unique_opens"]) == (3, 1)
    assert await db.fetchval("SELECT count(*) FROM opens") == 3


async def test_open_within_seconds_of_the_send_is_a_machine_open(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1, sent_seconds_ago=1)
    async with app_factory(machine_open_window=10.0) as (_app, client):
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
    assert await db.fetchval("SELECT machine_reason FROM opens_readable") == "soon_after_send"
    reason = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'reason'")
    assert (reason["key"], reason["opens"], reason["machine_opens"]) == ("soon_after_send", 1, 1)


async def test_apple_privacy_prefetch_is_a_machine_open_without_country(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory() as (app, _client), client_from(app, "81.2.69.160") as client:
        await client.get(
            pixel_path(subscriber_id, campaign_id), headers={"User-Agent": "Mozilla/5.0"}
        )
    row = await db.fetchrow("SELECT machine_reason, country FROM opens_readable")
    assert (row["machine_reason"], row["country"]) == ("apple_mpp", None)


@pytest.mark.parametrize(
    ("mode", "ip", "stored"),
    [
        ("full", "81.2.69.160", "81.2.69.160"),
        ("truncated", "81.2.69.160", "81.2.69.0"),
        ("none", "81.2.69.160", None),
        ("full", "2001:db8:1:2:3:4:5:6", "2001:db8:1:2:3:4:5:6"),
        ("truncated", "2001:db8:1:2:3:4:5:6", "2001:db8:1::"),
        ("none", "2001:db8:1:2:3:4:5:6", None),
        ("truncated", "::ffff:81.2.69.160", "81.2.69.0"),
    ],
)
async def test_ip_is_stored_per_ip_mode_and_country_comes_from_the_full_address(
    app_factory, db, mode, ip, stored
) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory(ip_mode=mode) as (app, _client), client_from(app, ip) as client:
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
    row = await db.fetchrow("SELECT ip, country FROM opens_readable")
    assert row["ip"] == stored
    if "81.2.69.160" in ip:  # a documented GB address (MaxMind's test data uses it too)
        assert row["country"] == "GB"
    country = await db.fetchval("SELECT key FROM campaign_counts WHERE dimension = 'country'")
    assert country == (row["country"] or "unknown")


async def test_ipv6_open_gets_a_country(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    async with app_factory() as (app, _c), client_from(app, "2a00:1450:4001:82a::2003") as client:
        await client.get(pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME})
    row = await db.fetchrow("SELECT ip, country FROM opens_readable")
    assert row["ip"] == "2a00:1450:4001::"
    assert row["country"] is not None and len(row["country"]) == 2


@pytest.mark.parametrize(
    ("mode", "consent", "withdrawn", "personal"),
    [
        ("consent", True, False, True),
        ("consent", False, False, False),
        ("notice", False, False, True),
        ("notice", True, True, False),
        ("off", True, False, False),
    ],
)
async def test_tracking_mode_decides_whether_an_open_is_personal(
    app_factory, db, mode, consent, withdrawn, personal
) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1, consent=consent)
    if withdrawn:
        await db.execute("UPDATE subscribers SET tracking_withdrawn_at = now()")
    async with app_factory(tracking_mode=mode) as (_app, client):
        for _ in range(2):
            assert_gif(
                await client.get(
                    pixel_path(subscriber_id, campaign_id), headers={"User-Agent": CHROME}
                )
            )
    total = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'total'")
    assert total["opens"] == 2  # the anonymous counters always move
    assert await db.fetchval("SELECT count(*) FROM opens") == (2 if personal else 0)
    first = await db.fetchval("SELECT first_open_at FROM deliveries")
    assert (first is not None) is personal
    assert total["unique_opens"] == (1 if personal else 0)
    key = "personal" if personal else "anonymous"
    tracking = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'tracking'")
    assert (tracking["key"], tracking["opens"]) == (key, 2)


async def test_pending_subscriber_opens_are_never_personal_in_notice_mode(app_factory, db) -> None:
    campaign_id, (subscriber_id,) = await seed(db, 1)
    await db.execute("UPDATE subscribers SET status = 'pending'")
    async with app_factory(tracking_mode="notice") as (_app, client):
        await client.get(pixel_path(subscriber_id, campaign_id))
    assert await db.fetchval("SELECT count(*) FROM opens") == 0


async def test_concurrent_opens_over_asgi_are_all_recorded_by_the_time_they_are_answered(
    app_factory, db
) -> None:
    campaign_id, subscriber_ids = await seed(db, 50)
    async with app_factory() as (_app, client):
        responses = await asyncio.gather(
            *(
                client.get(pixel_path(sid, campaign_id), headers={"User-Agent": CHROME})
                for sid in subscriber_ids * 6
            )
        )
        assert all(r.status_code == 200 and r.content == GIF for r in responses)
        assert await db.fetchval("SELECT count(*) FROM opens") == 300
    total = await db.fetchrow("SELECT * FROM campaign_counts WHERE dimension = 'total'")
    assert (total["opens"], total["unique_opens"]) == (300, 50)
    assert await db.fetchval("SELECT count(*) FROM deliveries WHERE first_open_at IS NULL") == 0


# -- real uvicorn: transport-level behaviour ----------------------------------------------
@pytest.mark.slow
async def test_forwarded_for_is_believed_only_from_trusted_proxies(database_url, smtp, db) -> None:
    campaign_id, (first, second) = await seed(db, 2)
    headers = {"X-Forwarded-For": "81.2.69.160", "User-Agent": CHROME}
    trusted = support.ServiceProcess(
        support.base_env(database_url, smtp.url, FORWARDED_ALLOW_IPS="127.0.0.1", IP_MODE="full")
    ).start()
    try:
        await trusted.wait_ready()
        async with httpx.AsyncClient(base_url=trusted.url) as client:
            assert_gif(await client.get(pixel_path(first, campaign_id), headers=headers))
    finally:
        trusted.stop()
    untrusted = support.ServiceProcess(
        support.base_env(database_url, smtp.url, FORWARDED_ALLOW_IPS="10.9.9.9", IP_MODE="full")
    ).start()
    try:
        await untrusted.wait_ready()
        async with httpx.AsyncClient(base_url=untrusted.url) as client:
            assert_gif(await client.get(pixel_path(second, campaign_id), headers=headers))
    finally:
        untrusted.stop()
    rows = {r["subscriber_id"]: r["ip"] for r in await db.fetch("SELECT * FROM opens_readable")}
    assert rows == {first: "81.2.69.160", second: "127.0.0.1"}


@pytest.mark.slow
async def test_sigterm_flushes_every_answered_open_in_answer_first_mode(
    database_url, smtp, db
) -> None:
    campaign_id, subscriber_ids = await seed(db, 100)
    service = support.ServiceProcess(
        support.base_env(database_url, smtp.url, PIXEL_MODE="answer-first")
    ).start()
    answered = 0
    try:
        await service.wait_ready()
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(base_url=service.url, limits=limits) as client:
            for _ in range(3):
                responses = await asyncio.gather(
                    *(client.get(pixel_path(sid, campaign_id)) for sid in subscriber_ids)
                )
                answered += sum(r.status_code == 200 and r.content == GIF for r in responses)
        service.signal()
        assert service.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal
    finally:
        service.stop()
    assert answered == 300
    assert await db.fetchval("SELECT count(*) FROM opens") == answered
    assert (
        await db.fetchval("SELECT opens FROM campaign_counts WHERE dimension = 'total'") == answered
    )
    assert await wait_for_count(db, "SELECT count(*) FROM opens", answered) == answered
