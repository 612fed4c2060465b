"""Campaign emails through the real outbox worker and a real SMTP server."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import time
from collections import Counter
from collections.abc import Callable

import asyncpg
import dkim as dkimpy
import httpx
import pytest

from service.campaigns import mail, store
from service.db.queries import queries
from service.mail import messages
from service.tokens import Tokens
from service.web.pages import environment
from tests import people, support

TOKENS = Tokens((support.TEST_KEY,), 3600)
REPLICAS = 2
_UNSUB = re.compile(re.escape(support.PUBLIC_URL) + r"/unsubscribe/([A-Za-z0-9._-]+)")
_PIXEL = re.compile(
    r'<img src="' + re.escape(support.PUBLIC_URL) + r'/o/([A-Za-z0-9._-]+)\.gif" width="1"'
    r' height="1" alt=""[^>]*>'
)
_TRACKING = re.compile(re.escape(support.PUBLIC_URL) + r"/tracking/([A-Za-z0-9._-]+)")

CAMPAIGN = {
    "name": "April issue",
    "subject": "April news for {{ name or 'you' }}",
    "html": '<p>Dear {{ name }},</p><p>Read <a href="https://site.example/april">more</a>.</p>',
    "text": "Dear {{ name }},\n\nRead more: https://site.example/april\n",
}


async def send(client, admin_headers, **changes) -> tuple[int, int]:
    created = await client.post(
        "/admin/api/campaigns", json={**CAMPAIGN, **changes}, headers=admin_headers
    )
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    queued = await client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers)
    assert queued.status_code == 202
    return campaign_id, queued.json()["queued"]


def links_of(message: support.Received) -> dict[str, object]:
    """Tokens found in one received campaign email, decoded."""
    html, text = message.part("html"), message.part("plain")
    header = message.message["List-Unsubscribe"]
    pixels = _PIXEL.findall(html)
    assert len(pixels) <= 1
    return {
        "header": TOKENS.verify_unsubscribe(_UNSUB.fullmatch(header.strip("<>")).group(1)),
        "html": {TOKENS.verify_unsubscribe(t) for t in _UNSUB.findall(html)},
        "text": {TOKENS.verify_unsubscribe(t) for t in _UNSUB.findall(text)},
        "pixel": TOKENS.verify_pixel(pixels[0]) if pixels else None,
        "tracking": {TOKENS.verify_tracking(t) for t in _TRACKING.findall(html + text)},
    }


class RawSink(support.SmtpSink):
    """Keeps the raw bytes only: parsing 10,000 messages while they arrive would compete
    with the sender for the one event loop; they are parsed after the send."""

    def __init__(self) -> None:
        super().__init__()
        self.raw: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server, session, envelope) -> str:
        self.raw.append((list(envelope.rcpt_tos), envelope.original_content or envelope.content))
        return "250 OK"

    def parsed(self, limit: int | None = None) -> list[support.Received]:
        return [
            support.Received(
                "", rcpt, email.message_from_bytes(raw, policy=email.policy.default), raw
            )
            for rcpt, raw in self.raw[:limit]
        ]


_RAW_HEADER = re.compile(rb"\r\nList-Unsubscribe: <[^>]*/unsubscribe/([A-Za-z0-9._-]+)>\r\n")


def raw_links(raw: bytes) -> tuple[int, set[int], list[tuple[int, int]]]:
    """(List-Unsubscribe subscriber, unsubscribe link subscribers in the bodies, pixel
    claims) read from the wire form without the email parser: quoted-printable only adds
    soft line breaks and `=3D` around the URLs, whose tokens need no escaping."""
    head, _, body = raw.partition(b"\r\n\r\n")
    [header_token] = _RAW_HEADER.findall(b"\r\n" + head + b"\r\n")
    decoded = body.replace(b"=\r\n", b"").replace(b"=3D", b"=").decode()
    in_bodies = {TOKENS.verify_unsubscribe(t) for t in _UNSUB.findall(decoded)}
    pixels = [TOKENS.verify_pixel(t) for t in _PIXEL.findall(decoded)]
    return (
        TOKENS.verify_unsubscribe(header_token.decode()),
        in_bodies,
        [(p.subscriber_id, p.campaign_id) for p in pixels],
    )


async def wait_progressing(count: Callable[[], int], target: int, stall: float = 60) -> None:
    """Waits for `count()` to reach `target`, failing only if it stops moving for `stall`
    seconds: a slow machine takes longer, a stuck sender still fails."""
    last, moved_at = -1, time.monotonic()
    while (now := count()) < target:
        if now != last:
            last, moved_at = now, time.monotonic()
        assert time.monotonic() - moved_at < stall, f"stuck at {now} of {target}"
        await asyncio.sleep(0.05)


async def settled(db, stall: float = 60) -> None:
    """Waits until the outbox is empty (the worker commits just after the relay's 250),
    failing only if it stops shrinking for `stall` seconds."""
    last, moved_at = -1, time.monotonic()
    while left := await db.fetchval("SELECT count(*) FROM outbox"):
        if left != last:
            last, moved_at = left, time.monotonic()
        assert time.monotonic() - moved_at < stall, f"the outbox is stuck at {left} jobs"
        await asyncio.sleep(0.02)


# -- one email ----------------------------------------------------------------------------


async def test_a_campaign_email_has_the_pixel_footer_links_and_rfc8058_headers(
    client, db, smtp, admin_headers
) -> None:
    sid = await people.add_subscriber(
        db, "ada@example.org", name='Ada <b>"&"</b>', tracking_consent=True
    )
    campaign_id, queued = await send(client, admin_headers)
    assert queued == 1
    [message] = await smtp.wait_for(1)
    assert message.to == "ada@example.org"
    token = TOKENS.unsubscribe(sid)
    unsubscribe_url = f"{support.PUBLIC_URL}/unsubscribe/{token}"
    assert message.message["List-Unsubscribe"] == f"<{unsubscribe_url}>"
    assert f"\r\nList-Unsubscribe: <{unsubscribe_url}>\r\n".encode() in message.raw  # one line
    assert message.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message.message["Subject"] == 'April news for Ada <b>"&"</b>'
    html, text = message.part("html"), message.part("plain")
    assert "Dear Ada &lt;b&gt;&#34;&amp;&#34;&lt;/b&gt;," in html  # escaped in HTML
    assert 'Dear Ada <b>"&"</b>,' in text  # verbatim in text
    found = links_of(message)
    assert found["header"] == sid and found["html"] == {sid} and found["text"] == {sid}
    assert (found["pixel"].subscriber_id, found["pixel"].campaign_id) == (sid, campaign_id)
    assert found["tracking"] == {sid}  # consent mode, and this subscriber consented
    # The pixel is the last thing of the HTML body.
    assert html.rstrip().endswith('border:0;margin:0;padding:0">')
    assert _PIXEL.search(html).end() == len(html.rstrip())
    assert "Unsubscribe" in html and "Unsubscribe" in text
    # The link opens a page with a button (GET changes nothing): the footer says so.
    assert "one click" not in html and "a page where one button deletes" in html
    assert "a page where one button deletes" in " ".join(text.split())
    await settled(db)
    sent = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert (sent["sent"], sent["failed"]) == (1, 0)
    assert await db.fetchval("SELECT sent_at FROM deliveries") is not None


@pytest.mark.parametrize(
    ("mode", "consent", "has_tracking_link", "pixel"),
    [
        ("consent", False, False, "campaign"),
        ("consent", True, True, "personal"),
        ("notice", False, True, "personal"),  # the objection link, in every email
        ("off", True, False, None),
    ],
)
async def test_the_tracking_link_and_pixel_follow_the_mode_and_the_consent(
    app_factory, db, smtp, admin_headers, mode, consent, has_tracking_link, pixel
) -> None:
    sid = await people.add_subscriber(db, "t@example.org", name="T", tracking_consent=consent)
    async with app_factory(tracking_mode=mode) as (_app, client):
        await send(client, admin_headers)
        [message] = await smtp.wait_for(1)
    found = links_of(message)
    assert found["tracking"] == ({sid} if has_tracking_link else set())
    assert ("/tracking/" in message.part("plain")) is has_tracking_link
    claim = found["pixel"]
    if pixel is None:
        assert claim is None
    else:
        assert claim.subscriber_id == (sid if pixel == "personal" else None)


async def test_footer_and_pixel_go_before_the_closing_body_tag_of_a_whole_document(
    client, db, smtp, admin_headers
) -> None:
    await people.add_subscriber(db, "doc@example.org")
    document = "<!doctype html><html><body><p>Hi {{ name or 'friend' }}</p></BODY></html>"
    await send(client, admin_headers, html=document)
    [message] = await smtp.wait_for(1)
    html = message.part("html")
    assert html.rstrip().endswith("</BODY></html>")
    assert html.index("<p>Hi friend</p>") < html.index("Unsubscribe") < html.index('alt=""')
    assert _PIXEL.search(html).end() == html.index("</BODY>")


async def test_composer_sends_nothing_to_someone_gone_pending_or_already_mailed(
    db, settings
) -> None:
    campaign_id = await people.add_campaign(db)
    ctx = messages.MailContext(settings, TOKENS, environment())
    active = await people.add_subscriber(db, "a@example.org", name="A")
    pending = await people.add_subscriber(db, "p@example.org", status="pending")
    for sid in (active, pending):
        await db.execute(
            "INSERT INTO deliveries (campaign_id, subscriber_id) VALUES ($1, $2)", campaign_id, sid
        )

    def job(sid: int) -> dict[str, object]:
        return {
            "id": 1,
            "kind": "campaign",
            "subscriber_id": sid,
            "campaign_id": campaign_id,
            "attempts": 0,
        }

    async def compose(job: dict[str, object]) -> object:
        return (await mail.compose_batch(db, [job], ctx))[1]

    message = await compose(job(active))
    assert message is not None and message.recipients == ("a@example.org",)
    assert email.message_from_bytes(message.data)["To"] == "A <a@example.org>"
    assert await compose(job(pending)) is None
    assert await compose(job(987654)) is None
    await db.execute("UPDATE deliveries SET sent_at = now() WHERE subscriber_id = $1", active)
    assert await compose(job(active)) is None


# -- DKIM ------------------------------------------------------------------------------------


async def test_campaign_mail_is_dkim_signed_over_both_list_unsubscribe_headers(
    app_factory, db, smtp, admin_headers, tmp_path
) -> None:
    dkim = support.dkim_key(tmp_path)
    await people.add_subscriber(db, "signed@example.org", name="Signed")
    async with app_factory(
        dkim_private_key_file=dkim.path, dkim_selector="news", dkim_domain="newsletter.test"
    ) as (_app, client):
        await send(client, admin_headers)
        [message] = await smtp.wait_for(1)

    dns = dkim.dnsfunc("news", "newsletter.test")
    assert dkimpy.verify(message.raw, dnsfunc=dns)
    signature = message.message["DKIM-Signature"]
    tags = dict(
        part.strip().split("=", 1) for part in "".join(signature.split()).split(";") if part
    )
    signed = [h.lower() for h in tags["h"].split(":")]
    assert "list-unsubscribe" in signed and "list-unsubscribe-post" in signed
    # A forged second List-Unsubscribe header breaks the signature (oversigned).
    tampered = message.raw.replace(
        b"List-Unsubscribe:", b"List-Unsubscribe: <https://evil.example/u>\r\nList-Unsubscribe:", 1
    )
    assert not dkimpy.verify(tampered, dnsfunc=dns)


# -- scale -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_thousand_subscribers_each_get_exactly_one_email_with_their_own_links(
    database_url, db, admin_headers
) -> None:
    """Sent by the outbox workers of real `serve` processes (replicas) on one database,
    to a real SMTP server in this process. One worker sends one email at a time; two
    processes use both cores of a small machine."""
    await people.add_many(db, 10_000)
    emails_by_id = dict(await db.fetch("SELECT id, email FROM subscribers"))
    sink = RawSink()
    await sink.start()
    env = support.base_env(database_url, sink.url, OUTBOX_POLL_INTERVAL="50ms")
    replicas = [support.ServiceProcess(env, "--no-migrate").start() for _ in range(REPLICAS)]
    try:
        for replica in replicas:
            await replica.wait_ready()
        async with httpx.AsyncClient(base_url=replicas[0].url, timeout=30) as client:
            campaign_id, queued = await send(client, admin_headers)
            assert queued == 10_000
            await wait_progressing(lambda: len(sink.raw), 10_000)
            # Sending again mails nobody twice.
            again = await client.post(
                f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers
            )
            assert again.json() == {"queued": 0}
            # Every job is deleted after its relay's 250: nothing is left that could send.
            await settled(db)
    finally:
        # In threads: the replicas say QUIT to the sink, which runs on this event loop.
        await asyncio.gather(*(asyncio.to_thread(replica.stop) for replica in replicas))
        await sink.stop()

    per_recipient = Counter(rcpt[0] for rcpt, _raw in sink.raw)
    assert len(per_recipient) == 10_000 and set(per_recipient.values()) == {1}
    for rcpt, raw in sink.raw:
        sid, in_bodies, pixels = raw_links(raw)
        assert emails_by_id[sid] == rcpt[0]
        assert in_bodies == {sid}
        # No one of them consented to personal tracking: the campaign's own pixel.
        assert pixels == [(None, campaign_id)]
    # The shortcut above reads what the email parser reads:
    sample = sink.parsed(limit=3)
    for message in sample:
        assert raw_links(message.raw)[0] == links_of(message)["header"]
    row = await db.fetchrow(
        "SELECT recipients, sent, failed FROM campaigns WHERE id = $1", campaign_id
    )
    assert tuple(row) == (10_000, 10_000, 0)
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


@pytest.mark.slow
async def test_queueing_one_hundred_thousand_subscribers_queues_each_once(db) -> None:
    """How long it takes is bench/bench_campaign_send.py's question, not this test's."""
    await people.add_many(db, 100_000)
    campaign_id = await people.add_campaign(db)
    queued = await store.queue_send(db, campaign_id)
    assert queued == 100_000
    assert (
        await db.fetchval("SELECT count(*) FROM outbox WHERE campaign_id = $1", campaign_id)
        == 100_000
    )
    assert await store.queue_send(db, campaign_id) == 0


async def test_sending_a_list_whose_queueing_outlasts_the_command_timeout_queues_it(
    app_factory, db, admin_headers
) -> None:
    """Queueing a million recipients takes seconds (bench_campaign_send), more than the
    pool's DB_COMMAND_TIMEOUT for page queries (10 s): the send from the API or the
    dashboard must not be cut off by it. Here a 0.1 s timeout against 100,000 rows."""
    await people.add_many(db, 100_000)
    # No worker here: it would start sending (and deleting sent jobs) before the count.
    async with app_factory(db_command_timeout=0.1, outbox_concurrency=0) as (_app, client):
        campaign_id, queued = await send(client, admin_headers)
    assert queued == 100_000
    assert (
        await db.fetchval("SELECT count(*) FROM outbox WHERE campaign_id = $1", campaign_id)
        == 100_000
    )


# -- erasure while sending ------------------------------------------------------------------


async def test_unsubscribing_while_the_campaign_is_being_sent_stops_their_email(
    client, db, smtp, admin_headers
) -> None:
    """No email leaves after the erasure commits, and nothing fails."""
    await people.add_many(db, 400)
    # Chosen by position, not by id (ids depend on the sequence, and a list of ids that
    # matched nobody would leave the loops below with nothing to check).
    everyone = await db.fetch("SELECT id, email FROM subscribers ORDER BY id")
    targets = [everyone[i] for i in (39, 40, 119, 199, 200, 201, 398)]
    assert len({row["id"] for row in targets}) == 7
    campaign_id, queued = await send(client, admin_headers)
    assert queued == 400
    await smtp.wait_for(30, timeout=20)

    async def unsubscribe(row) -> tuple[str, int]:
        response = await client.post(
            f"/unsubscribe/{TOKENS.unsubscribe(row['id'])}", content="List-Unsubscribe=One-Click"
        )
        assert response.status_code == 200
        return row["email"], len(smtp.to(row["email"]))

    at_erasure = dict(await asyncio.gather(*(unsubscribe(row) for row in targets)))
    await people.add_subscriber(db, "late@example.org")
    await settled(db)  # every job is deleted after its relay's answer: all sends are done
    for address, count in at_erasure.items():
        assert count <= 1
        assert len(smtp.to(address)) == count, f"{address} was mailed after the erasure"
    row = await db.fetchrow("SELECT sent, failed FROM campaigns WHERE id = $1", campaign_id)
    assert row["failed"] == 0
    assert row["sent"] == len(smtp.messages) == 400 - sum(1 for c in at_erasure.values() if c == 0)
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0
    assert smtp.to("late@example.org") == []


async def test_a_send_racing_erasures_neither_fails_nor_queues_the_erased(
    client, db, admin_headers, settings
) -> None:
    """An erasure committing while the INSERT … SELECT runs drops that subscriber from its
    recipients (their row lock is gone): no failure, no orphan row."""
    await people.add_many(db, 20_000)
    campaign_id = await people.add_campaign(db)
    victims = [
        r["id"] for r in await db.fetch("SELECT id FROM subscribers ORDER BY id DESC LIMIT 30")
    ]

    async def erase_all() -> None:
        for sid in victims:
            response = await client.post(f"/unsubscribe/{TOKENS.unsubscribe(sid)}")
            assert response.status_code == 200

    response, _ = await asyncio.gather(
        client.post(f"/admin/api/campaigns/{campaign_id}/send", headers=admin_headers),
        erase_all(),
    )
    assert response.status_code == 202
    assert (
        await db.fetchval("SELECT count(*) FROM deliveries WHERE subscriber_id = ANY($1)", victims)
        == 0
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM outbox o LEFT JOIN subscribers s ON s.id = o.subscriber_id"
            " WHERE s.id IS NULL"
        )
        == 0
    )


# -- recipients export at scale ------------------------------------------------------------


@pytest.mark.slow
async def test_recipients_export_of_100000_streams_with_flat_memory(database_url, smtp, db) -> None:
    await people.add_many(db, 100_000)
    campaign_id = await people.add_campaign(db)
    service = support.ServiceProcess(support.base_env(database_url, smtp.url)).start()
    try:
        await service.wait_ready()
        pid = service.proc.pid
        headers = {"Authorization": f"Bearer {support.ADMIN_TOKEN}"}
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as http:
            # Warm up (imports, pool, JIT-free code paths) with a small export first.
            await http.get(f"/admin/api/campaigns/{campaign_id}", headers=headers)
            baseline = support.proc_field(pid, "status", "VmRSS")
            peak, lines, first_chunk_at = baseline, 0, None
            started = time.monotonic()
            async with http.stream(
                "GET", f"/admin/api/campaigns/{campaign_id}/recipients", headers=headers
            ) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if not line:
                        continue
                    if first_chunk_at is None:
                        first_chunk_at = time.monotonic() - started
                        json.loads(line)
                    lines += 1
                    if lines % 5000 == 0:
                        peak = max(peak, support.proc_field(pid, "status", "VmRSS"))
            total = time.monotonic() - started
    finally:
        await asyncio.to_thread(service.stop)
    growth_mib = (peak - baseline) / 1024
    print(
        f"\n100,000 recipients: first line after {first_chunk_at:.2f}s of {total:.2f}s,"
        f" RSS growth {growth_mib:.1f} MiB"
    )
    assert lines == 100_000
    # Streamed: the first batch's lines arrive long before the last (an answer built whole
    # and sent at the end would have its first line at the end).
    assert first_chunk_at is not None and first_chunk_at < total / 4
    # Buffering 100,000 records and their lines would take well over 100 MiB.
    assert growth_mib < 40


async def test_a_send_blocked_by_an_uncommitted_erasure_goes_on_without_that_subscriber(
    db, database_url
) -> None:
    """The erasure deletes the subscriber row first; the send's lock on its recipients
    (FOR KEY SHARE, standing for the foreign keys: sql/130) waits for it and, once it
    commits, passes over that subscriber."""
    await people.add_many(db, 50)
    campaign_id = await people.add_campaign(db)
    eraser = await asyncpg.connect(database_url)
    sender = await asyncpg.connect(database_url)
    try:
        erasing = eraser.transaction()
        await erasing.start()
        await eraser.execute("DELETE FROM subscribers WHERE id = 25")
        queueing = asyncio.create_task(store.queue_send(sender, campaign_id))
        await support.lock_waited_on(db, sender.get_server_pid())
        assert not queueing.done(), "the send did not wait for the erasure"
        await erasing.commit()
        assert await asyncio.wait_for(queueing, 10) == 49
    finally:
        await eraser.close()
        await sender.close()
    assert await db.fetchval("SELECT count(*) FROM outbox WHERE subscriber_id = 25") == 0
    assert await db.fetchval("SELECT recipients FROM campaigns WHERE id = $1", campaign_id) == 49


async def test_an_erasure_after_the_send_locked_its_recipients_waits_and_then_deletes_the_queued(
    db, database_url
) -> None:
    """The other order: deliveries and outbox carry no foreign keys (sql/130), so the
    send's own lock on each recipient makes a later erasure wait for the send's commit,
    and the erasure's cascade then finds and deletes the queued rows."""
    await people.add_many(db, 50)
    campaign_id = await people.add_campaign(db)
    sender = await asyncpg.connect(database_url)
    eraser = await asyncpg.connect(database_url)
    try:
        sending = sender.transaction()
        await sending.start()
        queue = queries("campaigns").queue_campaign
        assert await queue.fetchval(sender, campaign_id=campaign_id) == 50
        erasing = asyncio.create_task(eraser.execute("DELETE FROM subscribers WHERE id = 25"))
        await support.lock_waited_on(db, eraser.get_server_pid())
        assert not erasing.done(), "the erasure did not wait for the send"
        await sending.commit()
        assert await asyncio.wait_for(erasing, 10) == "DELETE 1"
    finally:
        await sender.close()
        await eraser.close()
    left = "SELECT count(*) FILTER (WHERE subscriber_id = 25), count(*) FROM {}"
    assert tuple(await db.fetchrow(left.format("outbox"))) == (0, 49)
    assert tuple(await db.fetchrow(left.format("deliveries"))) == (0, 49)
