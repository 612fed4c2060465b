"""Privacy at the edges of the service: what it keeps in memory and prints, what its
rate-limit hashes can reveal, what its statistics single out, how its admin entry and
its sign-up answer withstand guessing, and erasures that survive a backup restore."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest

from service import cli
from service.campaigns import stats
from service.privacy import erasure
from service.tracking import recorder
from service.web import ratelimit
from tests import people, support
from tests.pixel_support import CHROME, pixel_path, seed, wait_for_count

# -- memory and output -------------------------------------------------------------


def test_the_ip_cache_forgets_a_full_address_within_its_lifetime() -> None:
    now = [1000.0]
    computed: list[str | None] = []

    def compute(ip: str | None) -> tuple[str | None, str | None, str | None]:
        computed.append(ip)
        return ("198.51.100.0", "FR", None)

    cache = recorder.ExpiringCache(compute, seconds=60, size=100, clock=lambda: now[0])
    cache("198.51.100.23")
    cache("198.51.100.23")
    assert computed == ["198.51.100.23"]  # a hit while young
    for step in range(1, 13):  # the recorder's timer: every seconds / 6
        now[0] = 1000.0 + step * 10
        cache.expire()
        if step * 10 >= 60:
            assert "198.51.100.23" not in cache.keys(), f"still cached after {step * 10}s"
    # With no timer at all, the next look-up turns the generations too.
    cache("203.0.113.9")
    now[0] += 61
    cache("192.0.2.1")
    assert cache.keys() == ["192.0.2.1"]


def test_the_ip_cache_keeps_a_bounded_number_of_addresses() -> None:
    cache = recorder.ExpiringCache(
        lambda ip: (None, None, None), seconds=60, size=10, clock=lambda: 5.0
    )
    for n in range(100):
        cache(f"192.0.2.{n}")
    assert len(cache.keys()) <= 20


async def test_the_recorder_holds_no_full_address_after_its_lifetime(
    app_factory, db, monkeypatch
) -> None:
    """The recorder's own timer ages the cache out, with no further traffic: nothing here
    calls expire() or moves a clock; the lifetime is shortened to 3 s. The address is
    looked for as soon as the pixel answers (PIXEL_MODE=wait: after its batch's commit,
    so after the batch filled the cache), not after a database poll that a loaded machine
    can stretch past the lifetime."""
    lifetime = 3.0
    monkeypatch.setattr(recorder, "IP_CACHE_SECONDS", lifetime)
    campaign_id, [sid] = await seed(db, 1)
    async with app_factory(pixel_mode="wait") as (app, _client):
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=("203.0.113.77", 4000)),
            base_url=support.PUBLIC_URL,
        )
        cached_at = time.monotonic()  # the entry is younger than this
        async with client:
            await client.get(pixel_path(sid, campaign_id), headers={"user-agent": CHROME})
        cache = app.state.recorder._ip_facts
        assert "203.0.113.77" in cache.keys()
        await wait_for_count(db, "SELECT count(*) FROM opens", 1)
        while "203.0.113.77" in cache.keys():
            # At most two generations and two timer periods (the lifetime), plus the
            # loop's lateness on a busy machine.
            assert time.monotonic() - cached_at < lifetime + 2, "the timer did not age it out"
            await asyncio.sleep(0.02)


async def test_the_cli_prints_no_error_text_that_can_carry_data(database_url, capsys) -> None:
    async def refused() -> None:
        con = await asyncpg.connect(database_url)
        try:
            await con.fetchval("SELECT 'alice@example.com'::int")
        finally:
            await con.close()

    with pytest.raises(asyncpg.PostgresError) as caught:
        await refused()
    assert "alice@example.com" in str(caught.value)  # what the database said

    # The CLI runs its own event loop: in a thread of its own, as in a process of its own.
    with pytest.raises(SystemExit):
        await asyncio.to_thread(cli._run_async, refused)
    printed = capsys.readouterr().err
    assert "alice@example.com" not in printed
    assert "InvalidTextRepresentationError (SQLSTATE 22P02)" in printed
    # Failures to reach the server keep their (data-free) message: host and port.
    assert "port 1" in cli.describe_error(OSError("Connect call failed on port 1"))


# -- rate-limit hashes ---------------------------------------------------------------


async def test_rate_limit_hashes_use_a_daily_key_that_is_destroyed_with_its_day(
    client, db, settings
) -> None:
    await client.post("/subscribe", data={"email": "k@example.com"})
    [key_row] = await db.fetch("SELECT day, key FROM rate_limit_keys")
    stored = {bytes(r["key"]) for r in await db.fetch("SELECT key FROM rate_limits")}
    # The key is random, not derived from SECRET_KEYS: holding the secret and a copy of
    # the rows is not enough to test every IPv4 address against them.
    import hashlib
    import hmac as hmac_module

    old_style = hashlib.sha256(b"newsletter.ratelimit\0" + settings.secret_keys[0].encode())
    guess = hmac_module.new(old_style.digest(), b"ip\0" + b"198.51.100.23", "sha256").digest()
    assert guess not in stored
    assert ratelimit.ip_key(bytes(key_row["key"]), "198.51.100.23") in stored
    # Once the day is over, the retention pass destroys the key and its rows.
    await db.execute("UPDATE rate_limit_keys SET day = day - 1")
    await db.execute("UPDATE rate_limits SET window_start = window_start - interval '1 day'")
    await ratelimit.purge_expired(db)
    assert await db.fetchval("SELECT count(*) FROM rate_limit_keys") == 0
    assert await db.fetchval("SELECT count(*) FROM rate_limits") == 0


async def test_an_erasure_finds_the_rate_limit_rows_after_the_secret_keys_rotated(
    app_factory, db, settings
) -> None:
    async with app_factory() as (_app, client):
        await client.post("/subscribe", data={"email": "rot@example.com"})
    assert await people.address_rate_limit_rows(db, settings, "rot@example.com") == 1
    rotated = ("a-brand-new-secret-key-0123456789abcdef",)
    async with app_factory(secret_keys=rotated) as (_app, client):
        response = await client.delete(
            "/admin/api/subscribers/rot@example.com",
            headers={"Authorization": f"Bearer {support.ADMIN_TOKEN}"},
        )
    assert response.status_code == 204
    assert await db.fetchval("SELECT count(*) FROM rate_limits WHERE scope = 'address'") == 0


# -- statistics ----------------------------------------------------------------------


async def test_no_breakdown_bucket_smaller_than_the_threshold_is_shown(
    app_factory, db, admin_headers
) -> None:
    campaign_id = await people.add_campaign(db)
    rows = [
        ("total", "", 16),
        ("country", "DE", 12),
        ("country", "FR", 3),
        ("country", "IS", 1),
        ("client", "Thunderbird", 15),
        ("client", "Lynx", 1),
        ("hour", "0", 14),
        ("hour", "37", 2),
    ]
    for dimension, key, opens in rows:
        await db.execute(
            "INSERT INTO campaign_counts (campaign_id, dimension, key, opens)"
            " VALUES ($1, $2, $3, $4)",
            campaign_id,
            dimension,
            key,
            opens,
        )
    async with app_factory() as (_app, client):
        result = (
            await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
        ).json()
    assert result["opens"] == 16  # totals stay exact
    assert [(b["country"], b["opens"]) for b in result["by_country"]] == [("DE", 12), ("other", 4)]
    assert [(b["client"], b["opens"]) for b in result["by_client"]] == [
        ("Thunderbird", 15),
        ("other", 1),
    ]
    assert [(b["hour"], b["opens"]) for b in result["by_hour"]] == [(0, 14), ("other", 2)]
    for breakdown in ("by_country", "by_client", "by_hour"):
        assert sum(b["opens"] for b in result[breakdown]) == 16


def test_merging_keeps_every_count_and_names_no_small_bucket() -> None:
    items = [
        {"k": k, "opens": n, "machine_opens": 0, "human_opens": n, "unique_opens": 0}
        for k, n in (("a", 9), ("b", 4), ("c", 5), ("other", 2))
    ]
    merged = stats.merge_small(items, "k", 5)
    assert [(i["k"], i["opens"]) for i in merged] == [("a", 9), ("c", 5), ("other", 6)]


# -- admin guessing ----------------------------------------------------------------


async def _clear_of_a_window_edge(length: int, margin: float = 15.0) -> None:
    """The limit's windows are fixed (service/web/ratelimit.py): they start at multiples
    of their length, and a count that straddles an edge starts again (once in about
    600 runs of a 1-second test with 10-minute windows). Start well inside one."""
    left = length - time.time() % length
    if left < margin:
        await asyncio.sleep(left + 0.5)


async def test_failed_admin_tokens_are_limited_per_client_and_a_right_one_waits_too(
    app_factory,
) -> None:
    await _clear_of_a_window_edge(600)
    async with app_factory(admin_auth_failures=3, admin_auth_window=600) as (app, _client):
        client = httpx.AsyncClient(  # https: the sign-in form's cookie is Secure
            transport=httpx.ASGITransport(app=app, client=("192.0.2.50", 4000)),
            base_url="https://newsletter.test",
        )
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        right = {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}
        assert (await client.get("/admin/api/campaigns", headers=right)).status_code == 200
        for _ in range(3):
            assert (await client.get("/admin/api/campaigns", headers=wrong)).status_code == 401
        limited = await client.get("/admin/api/campaigns", headers=right)
        assert limited.status_code == 429
        assert 0 < int(limited.headers["retry-after"]) <= 600
        # The dashboard's sign-in counts against the same limit.
        form = await client.get("/admin/login")
        token = form.text.split('name="login_token" value="')[1].split('"')[0]
        signin = await client.post(
            "/admin/login", data={"login_token": token, "token": support.ADMIN_TOKEN}
        )
        assert signin.status_code == 429
        assert "Retry-After" in signin.headers
        await client.aclose()


@pytest.mark.slow
async def test_the_admin_limit_holds_across_two_processes(database_url, smtp) -> None:
    env = support.base_env(database_url, smtp.url, ADMIN_AUTH_FAILURES="4", ADMIN_AUTH_WINDOW="10m")
    first, second = support.ServiceProcess(env), support.ServiceProcess(env, "--no-migrate")
    try:
        first.start()
        await first.wait_ready()
        second.start()
        await second.wait_ready()
        await _clear_of_a_window_edge(600)
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        async with httpx.AsyncClient() as client:
            for replica in (first, second, first, second):
                response = await client.get(f"{replica.url}/admin/api/campaigns", headers=wrong)
                assert response.status_code == 401
            for replica in (first, second):
                response = await client.get(
                    f"{replica.url}/admin/api/campaigns",
                    headers={"Authorization": f"Bearer {support.ADMIN_TOKEN}"},
                )
                assert response.status_code == 429, replica.output()
                assert int(response.headers["retry-after"]) > 0
    finally:
        first.stop()
        second.stop()


# -- sign-up timing -------------------------------------------------------------------


def ks_statistic(a: list[float], b: list[float]) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two
    empirical distribution functions (0: the same, 1: no overlap at all)."""
    a, b = sorted(a), sorted(b)
    i = j = 0
    gap = 0.0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            i += 1
        else:
            j += 1
        gap = max(gap, abs(i / len(a) - j / len(b)))
    return gap


async def test_the_sign_up_answer_takes_as_long_for_new_pending_and_subscribed_addresses(
    app_factory, db
) -> None:
    """Side by side, so drift of the machine hits the three cases alike, with the
    default SIGNUP_MIN_DURATION. Without the one statement and the padding (the earlier
    code), an active address answered after one round trip and a new one after five."""
    rounds = 150
    await db.execute(
        "INSERT INTO subscribers (email, status, confirmed_at)"
        " SELECT 'active' || n || '@example.com', 'active', now()"
        " FROM generate_series(0, $1) n",
        rounds,
    )
    await db.execute(
        "INSERT INTO subscribers (email) SELECT 'pending' || n || '@example.com'"
        " FROM generate_series(0, $1) n",
        rounds,
    )
    times: dict[str, list[float]] = {"new": [], "pending": [], "active": []}
    async with app_factory(
        signup_min_duration=0.1, rate_signup_per_ip_hour=100_000, rate_confirm_per_day=100
    ) as (_app, client):
        loop = asyncio.get_running_loop()

        async def timed(case: str, n: int) -> None:
            started = loop.time()
            response = await client.post("/subscribe", json={"email": f"{case}{n}@example.com"})
            times[case].append(loop.time() - started)
            assert response.status_code == 202

        # The three cases side by side, round after round, in a shuffled order: whichever
        # starts first in a round is also answered first.
        rng = random.Random(2026)
        for n in range(rounds):
            order = list(times)
            rng.shuffle(order)
            await asyncio.gather(*(timed(case, n) for case in order))
    gaps = {
        (a, b): ks_statistic(times[a], times[b])
        for a, b in (("new", "pending"), ("new", "active"), ("pending", "active"))
    }
    # Critical value of the two-sample KS test at alpha = 0.001 for n = m = 150: 0.225.
    assert all(gap < 0.225 for gap in gaps.values()), gaps


# -- erasures survive a backup restore -----------------------------------------------


def _pg_tool(name: str) -> str:
    try:
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / name
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed")
    return found


@pytest.mark.slow
async def test_an_erasure_survives_a_restore_of_a_backup_taken_before_it(
    pg_admin_url, database_url, db, settings, smtp, tmp_path
) -> None:
    campaign_id = await people.add_campaign(db)
    person = await people.add_person(db, settings, "gone@example.org", "restore", campaign_id)
    keeper = await people.add_person(db, settings, "stays@example.org", "keeper", campaign_id)
    dump = tmp_path / "backup.dump"
    subprocess.run(
        [_pg_tool("pg_dump"), "--format=custom", f"--file={dump}", database_url],
        check=True,
        capture_output=True,
    )
    # After the backup: the person unsubscribes.
    assert await erasure.erase_subscriber(db, person.id)
    assert not await people.find_anywhere(db, person.traces)

    # The restore brings them back ...
    restored_name = f"t_restored_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pg_admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{restored_name}"')
    finally:
        await admin.close()
    restored_url = support.with_database(pg_admin_url, restored_name)
    try:
        subprocess.run(
            [_pg_tool("pg_restore"), "--no-owner", f"--dbname={restored_url}", str(dump)],
            check=True,
            capture_output=True,
        )
        restored = await asyncpg.connect(restored_url)
        try:
            assert await people.find_anywhere(restored, person.traces)
            # ... until the journal of the live database is applied to it.
            env = {**os.environ, "DATABASE_URL": restored_url, "LOG_LEVEL": "warning"}
            result = support.run_cli(env, "reapply-erasures", "--journal-url", database_url)
            assert result.returncode == 0, result.stderr
            assert '"erased": 1' in result.stdout
            assert await people.find_anywhere(restored, person.traces) == {}
            assert (
                await restored.fetchval("SELECT count(*) FROM subscribers WHERE id = $1", keeper.id)
                == 1
            )
            # The journal names no one: ids and times only.
            journal = await restored.fetch("SELECT * FROM erasure_journal")
            assert next(tuple(r.keys()) for r in journal) == (
                "subscriber_id",
                "created_at",
                "erased_at",
            )
            # Run again: nothing more to do.
            again = support.run_cli(env, "reapply-erasures", "--journal-url", database_url)
            assert '"erased": 0' in again.stdout
        finally:
            await restored.close()
    finally:
        await support.drop_database(pg_admin_url, restored_name)


async def test_reapplying_never_touches_someone_who_got_a_reused_id(db, settings) -> None:
    """A restored database hands out the ids issued after the backup again; a journal
    row names an id *and* its row's creation time, so only that very row is erased."""
    campaign_id = await people.add_campaign(db)
    person = await people.add_person(db, settings, "first@example.org", "reuse1", campaign_id)
    assert await erasure.erase_subscriber(db, person.id)
    # The same id, given to someone else (as after a restore).
    await db.execute(
        "INSERT INTO subscribers (id, email, status) OVERRIDING SYSTEM VALUE"
        " VALUES ($1, 'second@example.org', 'active')",
        person.id,
    )
    # An id issued after the backup and erased since, which the restored sequence
    # would hand out again.
    await db.execute(
        "INSERT INTO erasure_journal (subscriber_id, created_at) VALUES (100000, now())"
    )
    counts = await erasure.reapply_erasures(db, db)
    assert counts == {"journal": 2, "erased": 0}
    assert await db.fetchval("SELECT email FROM subscribers WHERE id = $1", person.id) == (
        "second@example.org"
    )
    # No journalled id is handed out again, so no old link can name a new subscriber.
    next_id = await db.fetchval(
        "INSERT INTO subscribers (email) VALUES ('third@example.org') RETURNING id"
    )
    assert next_id > 100000


async def test_old_journal_rows_are_purged_by_retention(db, settings) -> None:
    from service.privacy import retention

    await db.execute(
        "INSERT INTO erasure_journal (subscriber_id, created_at, erased_at) VALUES"
        " (1, now() - interval '90 days', now() - interval '60 days'),"
        " (2, now() - interval '9 days', now() - interval '1 day')"
    )
    counts = await retention.purge(db, settings)
    assert counts["erasure_journal"] == 1
    assert await db.fetchval("SELECT array_agg(subscriber_id) FROM erasure_journal") == [2]
