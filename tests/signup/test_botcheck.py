"""The bot check (ALTCHA_HMAC_KEY): challenges from `GET /altcha`, solved by the altcha
library itself (`solve_challenge`, what the widget does in the browser), posted to
`POST /subscribe`; missing, wrong, expired and replayed payloads are field errors with
nothing stored and nothing sent, also across two apps on one database and between
concurrent requests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import time

import altcha
import httpx
import pytest

from service.db import connections
from service.privacy import retention
from service.settings import Settings, SettingsError
from service.signup import botcheck
from service.web import pages
from tests import support
from tests.signup_helpers import outbox_empty, table_counts, wait_until

KEY = "altcha-test-key-0123456789-abcdefghijklmnop"
ON = {"altcha_hmac_key": KEY}


async def solved(client: httpx.AsyncClient) -> str:
    """A payload as the widget would post it: the service's challenge, solved."""
    response = await client.get("/altcha")
    assert response.status_code == 200
    challenge = altcha.Challenge.from_dict(response.json())
    solution = await asyncio.to_thread(altcha.solve_challenge, challenge)
    assert solution is not None
    return altcha.Payload(challenge, solution).to_base64()


def solve_offline(settings: Settings) -> str:
    """A payload for a challenge made from `settings` (another key, another lifetime)."""
    challenge = altcha.Challenge.from_dict(botcheck.challenge(settings))
    solution = altcha.solve_challenge(challenge)
    assert solution is not None
    return altcha.Payload(challenge, solution).to_base64()


async def post(client: httpx.AsyncClient, as_json: bool, **fields: str) -> httpx.Response:
    if as_json:
        return await client.post("/subscribe", json=fields)
    return await client.post("/subscribe", data=fields)


async def assert_nothing_stored_or_sent(db, smtp, before: dict[str, int]) -> None:
    assert await table_counts(db) == before  # no subscriber, no evidence, no outbox job
    await asyncio.sleep(0.3)  # the outbox polls every 0.2 s in tests: it would have sent
    assert smtp.messages == []


# -- the endpoint ---------------------------------------------------------------------
async def test_altcha_is_404_when_the_key_is_unset_and_a_challenge_when_set(
    app_factory,
) -> None:
    async with app_factory() as (_app, client):
        off = await client.get("/altcha")
    async with app_factory(**ON) as (_app, client):
        on = await client.get("/altcha")
    assert off.status_code == 404
    assert on.status_code == 200


async def test_altcha_serves_a_signed_expiring_challenge_that_is_not_cached(
    app_factory,
) -> None:
    async with app_factory(**ON) as (_app, client):
        first = await client.get("/altcha")
        second = await client.get("/altcha")
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    assert first.headers["cache-control"] == "no-store"
    body = first.json()
    params = body["parameters"]
    assert params["algorithm"] == "PBKDF2/SHA-256"
    assert params["cost"] == botcheck.COST
    assert time.time() + 500 < params["expiresAt"] <= time.time() + 600
    assert re.fullmatch(r"[0-9a-f]{64}", body["signature"])
    assert second.json()["signature"] != body["signature"]  # a fresh challenge each time
    assert KEY not in first.text


async def test_altcha_answers_cors_for_the_configured_origins_only(app_factory) -> None:
    origin = "https://www.example.com"
    async with app_factory(**ON, cors_origins=(origin,)) as (_app, client):
        allowed = await client.get("/altcha", headers={"Origin": origin})
        other = await client.get("/altcha", headers={"Origin": "https://evil.example"})
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "access-control-allow-origin" not in other.headers


# -- accepted -------------------------------------------------------------------------
@pytest.mark.parametrize("as_json", [True, False])
async def test_a_solved_challenge_signs_up_and_sends_the_confirmation(
    app_factory, db, smtp, as_json
) -> None:
    async with app_factory(**ON) as (_app, client):
        payload = await solved(client)
        response = await post(client, as_json, email="ada@example.com", altcha=payload)
        assert response.status_code == (202 if as_json else 200)
        [message] = await smtp.wait_for(1)
    assert message.recipients == ["ada@example.com"]
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await db.fetchval("SELECT count(*) FROM altcha_spent") == 1


async def test_with_the_check_on_every_address_state_gets_the_same_answer(
    app_factory, db, smtp
) -> None:
    await db.execute(
        "INSERT INTO subscribers (email, status, confirmed_at) VALUES ('old@example.com', 'active', now())"
    )
    async with app_factory(**ON) as (_app, client):
        answers = []
        for address in ("new@example.com", "new@example.com", "old@example.com"):
            response = await post(client, True, email=address, altcha=await solved(client))
            headers = sorted((k, v) for k, v in response.headers.items() if k != "date")
            answers.append((response.status_code, headers, response.content))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == 202


# -- refused --------------------------------------------------------------------------
def _tampered(payload: str) -> str:
    data = json.loads(base64.b64decode(payload))
    data["solution"]["derivedKey"] = "00" * 32
    return base64.b64encode(json.dumps(data).encode()).decode()


def _longer_expiry(payload: str) -> str:
    data = json.loads(base64.b64decode(payload))
    data["challenge"]["parameters"]["expiresAt"] += 3600
    return base64.b64encode(json.dumps(data).encode()).decode()


BAD_PAYLOADS = {
    "missing": lambda s: None,
    "empty": lambda s: "",
    "not base64": lambda s: "not a payload!",
    "base64 of a list": lambda s: base64.b64encode(b"[1, 2]").decode(),
    "oversized": lambda s: "A" * (botcheck.PAYLOAD_MAX + 1),
    "another key's challenge": lambda s: solve_offline(
        s.replace(altcha_hmac_key="another-key-0123456789-abcdefghijklmnop")
    ),
    "wrong derived key": lambda s: _tampered(solve_offline(s)),
    "expiry moved (forged)": lambda s: _longer_expiry(solve_offline(s)),
    "expired": lambda s: solve_offline(s.replace(altcha_max_age=-5)),
}
MESSAGES = {
    "missing": botcheck.MISSING,
    "empty": botcheck.MISSING,
    "expired": botcheck.EXPIRED,
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
@pytest.mark.parametrize("as_json", [True, False])
async def test_a_missing_wrong_or_expired_payload_is_a_field_error_with_nothing_stored(
    make_settings, db, smtp, case, as_json
) -> None:
    from tests.conftest import running

    settings = make_settings(**ON)
    payload = await asyncio.to_thread(BAD_PAYLOADS[case], settings)
    before = await table_counts(db)
    fields = {"email": "bot@example.com", "name": "Ada"}
    if payload is not None:
        fields["altcha"] = payload
    async with running(settings) as (_app, client):
        response = await post(client, as_json, **fields)
        expected = MESSAGES.get(case, botcheck.WRONG)
        if as_json:
            assert response.status_code == 422
            assert response.json() == {"errors": {"altcha": expected}}
        else:
            assert response.status_code == 400
            assert expected in response.text
            # The form again, with what was typed and a fresh widget to solve.
            assert 'value="bot@example.com"' in response.text
            assert "<altcha-widget" in response.text
            assert response.headers["content-security-policy"] == pages.CSP_WITH_ALTCHA
        await assert_nothing_stored_or_sent(db, smtp, before)
    assert await db.fetchval("SELECT count(*) FROM altcha_spent") == 0


@pytest.mark.parametrize("as_json", [True, False])
async def test_a_replayed_payload_is_refused_with_nothing_stored_or_sent(
    app_factory, db, smtp, as_json
) -> None:
    async with app_factory(**ON) as (_app, client):
        payload = await solved(client)
        first = await post(client, as_json, email="ada@example.com", altcha=payload)
        assert first.status_code in (200, 202)
        await smtp.wait_for(1)
        await wait_until(lambda: outbox_empty(db))  # the sent job's row is gone first
        before = await table_counts(db)
        again = await post(client, as_json, email="bob@example.com", altcha=payload)
        if as_json:
            assert again.status_code == 422
            assert again.json() == {"errors": {"altcha": botcheck.REPLAYED}}
        else:
            assert again.status_code == 400
            assert botcheck.REPLAYED in again.text
            assert "<altcha-widget" in again.text
        smtp.messages.clear()
        await assert_nothing_stored_or_sent(db, smtp, before)
        metrics = (await client.get("/metrics")).text
    assert 'signups_total{outcome="bot_check"} 1.0' in metrics
    assert await db.fetchval("SELECT array_agg(email) FROM subscribers") == ["ada@example.com"]


async def test_a_payload_spent_on_one_replica_is_refused_by_another(app_factory, db, smtp) -> None:
    async with app_factory(**ON) as (_one, first), app_factory(**ON) as (_two, second):
        payload = await solved(first)
        accepted = await post(first, True, email="ada@example.com", altcha=payload)
        refused = await post(second, True, email="bob@example.com", altcha=payload)
    assert accepted.status_code == 202
    assert refused.status_code == 422
    assert refused.json() == {"errors": {"altcha": botcheck.REPLAYED}}
    assert await db.fetchval("SELECT array_agg(email) FROM subscribers") == ["ada@example.com"]


async def test_concurrent_posts_of_one_payload_sign_up_exactly_once(app_factory, db, smtp) -> None:
    async with app_factory(**ON) as (_one, first), app_factory(**ON) as (_two, second):
        payload = await solved(first)
        answers = await asyncio.gather(
            *(
                post(client, True, email=f"person{i}@example.com", altcha=payload)
                for i, client in enumerate([first, second] * 4)
            )
        )
        await smtp.wait_for(1)
        await asyncio.sleep(0.3)
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] + [422] * 7
    assert all(
        a.json() == {"errors": {"altcha": botcheck.REPLAYED}}
        for a in answers
        if a.status_code == 422
    )
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert len(smtp.messages) == 1


async def test_the_key_decides_whether_a_payload_is_needed(app_factory, db, smtp) -> None:
    async with app_factory() as (_app, client):
        off = await post(client, True, email="ada@example.com")
        await smtp.wait_for(1)
    async with app_factory(**ON) as (_app, client):
        on = await post(client, True, email="bob@example.com")
    assert off.status_code == 202
    assert on.status_code == 422
    assert await db.fetchval("SELECT array_agg(email) FROM subscribers") == ["ada@example.com"]


# -- the pages ------------------------------------------------------------------------
async def test_the_demo_page_carries_the_widget_and_a_csp_that_lets_it_work(
    app_factory,
) -> None:
    async with app_factory(demo_page=True) as (_app, client):
        off = await client.get("/")
    assert "altcha" not in off.text  # without the key: no widget and no scripts
    assert off.headers["content-security-policy"] == pages.CSP
    async with app_factory(**ON, demo_page=True) as (_app, client):
        page = await client.get("/")
        script = await client.get("/static/altcha.min.js")
    assert '<altcha-widget challenge="/altcha" name="altcha"' in page.text
    assert '<script src="/static/altcha.min.js" defer></script>' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp
    assert "connect-src 'self'" in csp  # the challenge
    assert "worker-src 'self' blob:" in csp  # the proof-of-work workers
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert b'customElements.define("altcha-widget"' in script.content


def test_the_shipped_widget_is_the_one_its_note_names() -> None:
    note = (pages.STATIC_DIR / "altcha.README.md").read_text()
    digest = hashlib.sha256((pages.STATIC_DIR / botcheck.WIDGET).read_bytes()).hexdigest()
    assert f"sha256 of `altcha.min.js`: `{digest}`" in note
    assert (pages.STATIC_DIR / "altcha.LICENSE.txt").read_text().startswith("MIT License")


# -- the replay store and the setting -------------------------------------------------
async def test_spent_rows_of_expired_challenges_are_purged(app_factory, db) -> None:
    await db.execute(
        "INSERT INTO altcha_spent VALUES ('old-1', now() - interval '1 hour'),"
        " ('old-2', now() - interval '1 minute'), ('live', now() + interval '5 minutes')"
    )
    async with app_factory(**ON) as (app, client):
        # The retention pass clears them (on a connection of its own, as it runs).
        con = await connections.connect(app.state.settings)
        try:
            counts = await retention.purge(con, app.state.settings)
        finally:
            await con.close()
        assert counts["altcha_spent"] == 2
        assert await db.fetchval("SELECT array_agg(signature) FROM altcha_spent") == ["live"]
        # A sign-up also clears expired rows as it spends its own.
        await db.execute("INSERT INTO altcha_spent VALUES ('old-3', now() - interval '1 hour')")
        response = await post(client, True, email="ada@example.com", altcha=await solved(client))
        assert response.status_code == 202
    assert await db.fetchval("SELECT count(*) FROM altcha_spent WHERE signature = 'old-3'") == 0
    assert await db.fetchval("SELECT count(*) FROM altcha_spent") == 2


def test_a_short_key_is_refused_at_start() -> None:
    env = {
        "DATABASE_URL": "postgresql://db/x",
        "SMTP_URL": "smtp://localhost:25",
        "PUBLIC_URL": support.PUBLIC_URL,
        "SECRET_KEYS": support.TEST_KEY,
    }
    with pytest.raises(SettingsError, match="ALTCHA_HMAC_KEY must be at least 32 characters"):
        Settings.from_env({**env, "ALTCHA_HMAC_KEY": "short"})
    assert Settings.from_env({**env, "ALTCHA_HMAC_KEY": ""}).altcha_hmac_key == ""
    assert Settings.from_env({**env, "ALTCHA_HMAC_KEY": KEY}).altcha_hmac_key == KEY
