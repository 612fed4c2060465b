"""POST /webhooks/{provider} through the real app and database: each provider's
authentication (SendGrid's published test vector; an SNS certificate made here, since
the service fetches certificates only from sns.<region>.amazonaws.com), 401/400/413,
replays, and the erasure the events cause."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from service.bounces import signatures
from service.bounces.signatures import sns_string_to_sign
from service.db import connections
from tests import people
from tests.bounce_support import mailed

TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-bounces"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-test.pem"
POSTMARK = "hook-user:a-long-webhook-password"
MAILGUN_KEY = "key-mailgun-signing-0123456789"

# SendGrid's published vector (sendgrid/sendgrid-python, test/unit/test_eventwebhook.py)
SG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62"
    "gw+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SG_SIGNATURE = "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
SG_BAD_SIGNATURE = "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0="
SG_TIMESTAMP = "1600112502"
SG_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
)


class Sns:
    """A signing key and certificate of our own, served as if from CERT_URL."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )
        self.fetched: list[str] = []

    async def fetch(self, url: str) -> bytes:
        self.fetched.append(url)
        if url == CERT_URL:
            return self.cert.public_bytes(serialization.Encoding.PEM)
        return b"<ConfirmSubscriptionResponse/>"

    def sign(self, message: dict, version: str = "2") -> dict:
        message = {**message, "SignatureVersion": version, "SigningCertURL": CERT_URL}
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()  # noqa: S303
        signature = self.key.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(signature).decode()}


def ses_bounce(address: str, status: str = "5.1.1", kind: str = "Permanent") -> dict:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": json.dumps(
            {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": kind,
                    "bounceSubType": "General",
                    "bouncedRecipients": [{"emailAddress": address, "status": status}],
                    "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                },
                "mail": {"source": "news@newsletter.test"},
            }
        ),
        "Timestamp": sns_time(),
    }


def sns_time(seconds_ago: float = 0) -> str:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds_ago)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@pytest.fixture
async def hooks(app_factory):
    sns = Sns()
    async with app_factory(
        webhook_ses_topic_arns=(TOPIC,),
        webhook_postmark_auth=POSTMARK,
        webhook_sendgrid_public_key=SG_KEY,
        webhook_mailgun_signing_key=MAILGUN_KEY,
        webhook_max_bytes=64 * 1024,
    ) as (app, client):
        app.state.sns.fetch = sns.fetch
        yield app, client, sns


async def counts(db) -> list[tuple]:
    rows = await db.fetch("SELECT campaign_id, event, source, reason, count FROM bounce_counts")
    return [tuple(r) for r in rows]


async def test_ses_permanent_bounce_erases_and_a_replay_changes_nothing(hooks, db) -> None:
    _app, client, sns = hooks
    _sid, campaign = await mailed(db, "gone@example.org")
    body = sns.sign(ses_bounce("gone@example.org"))
    first = await client.post("/webhooks/ses", json=body)
    assert first.status_code == 200 and first.json()["outcomes"] == {"erased": 1}
    again = await client.post("/webhooks/ses", json=body)
    assert again.status_code == 200 and again.json()["outcomes"] == {"unknown": 1}
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await counts(db) == [(campaign, "hard", "ses", "5.1.1", 1)]
    assert sns.fetched == [CERT_URL]  # fetched once, then cached


async def test_ses_signature_version_1_and_transient_bounces_count_soft(hooks, db) -> None:
    _app, client, sns = hooks
    _sid, campaign = await mailed(db, "full@example.org")
    body = sns.sign(ses_bounce("full@example.org", "4.2.2", "Transient"), version="1")
    assert (await client.post("/webhooks/ses", json=body)).json()["outcomes"] == {"counted": 1}
    assert await counts(db) == [(campaign, "soft", "ses", "4.2.2", 1)]


async def test_ses_forged_foreign_and_off_domain_messages_are_refused(hooks, db) -> None:
    _app, client, sns = hooks
    await mailed(db, "target@example.org")
    good = sns.sign(ses_bounce("target@example.org"))
    tampered = {**good, "Message": good["Message"].replace("Permanent", "Transient")}
    other_topic = sns.sign({**ses_bounce("target@example.org"), "TopicArn": TOPIC + "-x"})
    for host in ("sns.eu-west-1.amazonaws.com.evil.example", "evil.example", "s3.amazonaws.com"):
        off = {**good, "SigningCertURL": f"https://{host}/SimpleNotificationService-test.pem"}
        assert (await client.post("/webhooks/ses", json=off)).status_code == 401
    http = {**good, "SigningCertURL": CERT_URL.replace("https", "http")}
    for body in (tampered, other_topic, http, {**good, "Signature": "!!"}):
        assert (await client.post("/webhooks/ses", json=body)).status_code == 401
    assert set(sns.fetched) <= {CERT_URL}  # never another host
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_ses_subscription_confirmation_visits_only_an_sns_url(hooks) -> None:
    _app, client, sns = hooks
    confirm = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
        "Token": "2336412f37",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37",
        "Timestamp": sns_time(),
    }
    assert (await client.post("/webhooks/ses", json=sns.sign(confirm))).status_code == 200
    assert sns.fetched[-1] == confirm["SubscribeURL"]
    evil = sns.sign({**confirm, "SubscribeURL": "https://evil.example/?Action=x"})
    assert (await client.post("/webhooks/ses", json=evil)).status_code == 401
    assert "https://evil.example/?Action=x" not in sns.fetched


async def test_ses_subscription_confirmation_while_sns_is_unreachable_answers_503(hooks) -> None:
    """Never 500: SNS sends the confirmation again."""
    app, client, sns = hooks

    async def unreachable(url: str) -> bytes:
        if url == CERT_URL:
            return await sns.fetch(url)
        raise OSError("network unreachable")

    app.state.sns.fetch = unreachable
    confirm = {
        "Type": "SubscriptionConfirmation",
        "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1c",
        "Token": "2336412f38",
        "TopicArn": TOPIC,
        "Message": "You have chosen to subscribe to the topic.",
        "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f38",
        "Timestamp": sns_time(),
    }
    response = await client.post("/webhooks/ses", json=sns.sign(confirm))
    # The one Retry-After of every 503 the service answers (service/db/connections.py).
    assert response.status_code == 503
    assert response.headers["retry-after"] == connections.RETRY_AFTER == "5"


def test_sendgrid_published_vector_verifies_and_its_bad_signature_does_not() -> None:
    signatures.verify_sendgrid(SG_KEY, SG_PAYLOAD.encode(), SG_SIGNATURE, SG_TIMESTAMP)
    for signature, timestamp in ((SG_BAD_SIGNATURE, SG_TIMESTAMP), (SG_SIGNATURE, "1600112503")):
        with pytest.raises(signatures.BadSignature):
            signatures.verify_sendgrid(SG_KEY, SG_PAYLOAD.encode(), signature, timestamp)


async def test_sendgrid_needs_a_valid_signature_and_refuses_the_published_vector_as_stale(
    hooks,
) -> None:
    _app, client, _sns = hooks
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": SG_SIGNATURE,
        "X-Twilio-Email-Event-Webhook-Timestamp": SG_TIMESTAMP,
        "Content-Type": "application/json",
    }
    stale = await client.post("/webhooks/sendgrid", content=SG_PAYLOAD, headers=headers)
    assert stale.status_code == 401  # signed in September 2020
    bad = {**headers, "X-Twilio-Email-Event-Webhook-Signature": SG_BAD_SIGNATURE}
    assert (
        await client.post("/webhooks/sendgrid", content=SG_PAYLOAD, headers=bad)
    ).status_code == 401
    assert (await client.post("/webhooks/sendgrid", content=SG_PAYLOAD)).status_code == 401


class SendGrid:
    """A signing key of our own, its public half given to the app."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        public = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.public = base64.b64encode(public).decode()

    def headers(self, body: bytes, timestamp: str | None = None) -> dict[str, str]:
        timestamp = timestamp or str(int(time.time()))
        signature = self.key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        }


async def test_sendgrid_signed_spam_report_erases(app_factory, db) -> None:
    sendgrid = SendGrid()
    _sid, campaign = await mailed(db, "spam@example.org")
    body = json.dumps(
        [{"email": "spam@example.org", "event": "spamreport", "timestamp": int(time.time())}]
    ).encode()
    async with app_factory(webhook_sendgrid_public_key=sendgrid.public) as (_app, client):
        response = await client.post(
            "/webhooks/sendgrid", content=body, headers=sendgrid.headers(body)
        )
    assert response.json()["outcomes"] == {"erased": 1}
    assert await counts(db) == [(campaign, "complaint", "sendgrid", "spamreport", 1)]


def mailgun(
    event: dict, key: str = MAILGUN_KEY, timestamp: str | None = None, token: str | None = None
) -> dict:
    timestamp = timestamp or str(int(time.time()))
    token = token or secrets.token_hex(25)  # 50 characters, like Mailgun's
    signature = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": event,
    }


async def test_mailgun_permanent_failure_erases_and_a_wrong_key_is_refused(hooks, db) -> None:
    _app, client, _sns = hooks
    _sid, campaign = await mailed(db, "mg@example.org")
    event = {
        "event": "failed",
        "severity": "permanent",
        "recipient": "mg@example.org",
        "timestamp": dt.datetime.now(dt.UTC).timestamp(),
        "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"},
    }
    forged = mailgun(event, key="key-someone-else")
    assert (await client.post("/webhooks/mailgun", json=forged)).status_code == 401
    temporary = mailgun({**event, "severity": "temporary"})
    assert (await client.post("/webhooks/mailgun", json=temporary)).json()["events"] == 0
    assert (await client.post("/webhooks/mailgun", json=mailgun(event))).json()["outcomes"] == {
        "erased": 1
    }
    assert await counts(db) == [(campaign, "hard", "mailgun", "5.1.1", 1)]


async def test_postmark_basic_auth_and_bounce_types(hooks, db) -> None:
    _app, client, _sns = hooks
    _sid, campaign = await mailed(db, "pm@example.org")
    record = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "Email": "pm@example.org",
        "BouncedAt": dt.datetime.now(dt.UTC).isoformat(),
    }
    assert (await client.post("/webhooks/postmark", json=record)).status_code == 401
    wrong = ("hook-user", "not-the-password")
    assert (await client.post("/webhooks/postmark", json=record, auth=wrong)).status_code == 401
    auth = tuple(POSTMARK.split(":", 1))
    auto = {**record, "Type": "AutoResponder"}
    assert (await client.post("/webhooks/postmark", json=auto, auth=auth)).json()["outcomes"] == {}
    response = await client.post("/webhooks/postmark", json=record, auth=auth)
    assert response.json()["outcomes"] == {"erased": 1}
    assert await counts(db) == [(campaign, "hard", "postmark", "HardBounce", 1)]


async def test_a_late_webhook_for_an_address_never_reaches_a_newer_sign_up(hooks, db) -> None:
    _app, client, _sns = hooks
    auth = tuple(POSTMARK.split(":", 1))
    await people.add_subscriber(db, "new@example.org", status="pending")
    await db.execute("UPDATE subscribers SET confirm_sent_at = now()")
    record = {
        "RecordType": "Bounce",
        "Type": "HardBounce",
        "Email": "new@example.org",
        "BouncedAt": (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).isoformat(),
    }
    response = await client.post("/webhooks/postmark", json=record, auth=auth)
    assert response.json()["outcomes"] == {"unknown": 1}
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


@pytest.mark.parametrize("provider", ["ses", "postmark", "sendgrid", "mailgun"])
async def test_malformed_oversized_and_unknown_requests(hooks, provider) -> None:
    _app, client, _sns = hooks
    auth = tuple(POSTMARK.split(":", 1)) if provider == "postmark" else None
    for body in (b"not json", b"\xff\xfe", b"[1, 2", b'"a string"', b"{}", b"[{}]", b"null"):
        response = await client.post(f"/webhooks/{provider}", content=body, auth=auth)
        # Unsigned: SendGrid checks the signature over the raw body first, and an SNS
        # object is checked before its contents; the others read the body first.
        refused = provider == "sendgrid" or (provider == "ses" and body == b"{}")
        assert response.status_code == (401 if refused else 400), (body, response.status_code)
    big = await client.post(f"/webhooks/{provider}", content=b"[" + b" " * 70_000 + b"]", auth=auth)
    assert big.status_code == 413


async def test_unknown_or_unconfigured_providers_are_404(app_factory) -> None:
    async with app_factory() as (_app, client):
        for provider in ("ses", "postmark", "sendgrid", "mailgun", "other"):
            assert (await client.post(f"/webhooks/{provider}", json={})).status_code == 404


def mailgun_failure(address: str, **status) -> dict:
    return {
        "event": "failed",
        "severity": "permanent",
        "recipient": address,
        "timestamp": time.time(),
        "delivery-status": status or {"code": 550, "message": "5.1.1 No such mailbox"},
    }


def sendgrid_bounce(address: str, status: str = "5.1.1") -> bytes:
    item = {"email": address, "event": "bounce", "type": "bounce", "status": status}
    return json.dumps([{**item, "timestamp": int(time.time())}]).encode()


@pytest.fixture
async def signed_hooks(app_factory):
    """Every provider configured, SendGrid with a key of our own."""
    sns, sendgrid = Sns(), SendGrid()
    async with app_factory(
        webhook_ses_topic_arns=(TOPIC,),
        webhook_postmark_auth=POSTMARK,
        webhook_sendgrid_public_key=sendgrid.public,
        webhook_mailgun_signing_key=MAILGUN_KEY,
        webhook_max_bytes=64 * 1024,
    ) as (app, client):
        app.state.sns.fetch = sns.fetch
        yield client, sns, sendgrid


@pytest.mark.parametrize("seconds", [-330, 330, 30 * 86400])
async def test_stale_or_future_signed_events_are_refused_for_every_signing_provider(
    signed_hooks, db, seconds
) -> None:
    """A signature stays valid forever: only a signed timestamp within 5 minutes of now
    makes a request fresh (the providers' advice), so a request seen once is no key.
    30 s past the bound: a timestamp 301 s ahead, taken before three requests on a loaded
    machine, was 300 s ahead by the time the last one was checked (and then fresh)."""
    client, sns, sendgrid = signed_hooks
    await mailed(db, "kept@example.org")
    then = str(int(time.time()) - seconds)
    ses = sns.sign({**ses_bounce("kept@example.org"), "Timestamp": sns_time(seconds)})
    assert (await client.post("/webhooks/ses", json=ses)).status_code == 401
    body = sendgrid_bounce("kept@example.org")
    headers = sendgrid.headers(body, timestamp=then)
    assert (await client.post("/webhooks/sendgrid", content=body, headers=headers)).status_code == (
        401
    )
    stale = mailgun(mailgun_failure("kept@example.org"), timestamp=then)
    assert (await client.post("/webhooks/mailgun", json=stale)).status_code == 401
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    assert await counts(db) == []


async def test_a_mailgun_signature_is_taken_once_whatever_event_comes_with_it(
    signed_hooks, db
) -> None:
    """Mailgun signs only the timestamp and token, not the event: a replay of the same
    signature with another address is refused, and tokens are forgotten after the window."""
    client, _sns, _sendgrid = signed_hooks
    await mailed(db, "first@example.org")
    await mailed(db, "second@example.org")
    await db.execute(
        "INSERT INTO webhook_tokens (provider, token, at)"
        " VALUES ('mailgun', 'ancient', now() - interval '1 hour')"
    )
    first = mailgun(mailgun_failure("first@example.org"))
    assert (await client.post("/webhooks/mailgun", json=first)).json()["outcomes"] == {"erased": 1}
    replay = {**first, "event-data": mailgun_failure("second@example.org")}
    assert (await client.post("/webhooks/mailgun", json=replay)).status_code == 401
    assert (await client.post("/webhooks/mailgun", json=first)).status_code == 401
    emails = await db.fetch("SELECT email FROM subscribers")
    assert [r["email"] for r in emails] == ["second@example.org"]
    tokens_kept = await db.fetch("SELECT token FROM webhook_tokens")
    assert [r["token"] for r in tokens_kept] == [first["signature"]["token"]]


async def test_validly_signed_or_authenticated_but_malformed_events_answer_400(
    signed_hooks, db
) -> None:
    client, sns, sendgrid = signed_hooks
    await mailed(db, "kept@example.org")
    auth = tuple(POSTMARK.split(":", 1))
    nul = "kept\u0000@example.org"
    ses = sns.sign(ses_bounce(nul))
    assert (await client.post("/webhooks/ses", json=ses)).status_code == 400
    bad_time = sns.sign({**ses_bounce("kept@example.org"), "Timestamp": "yesterday"})
    assert (await client.post("/webhooks/ses", json=bad_time)).status_code == 400
    body = sendgrid_bounce("kept@example.org")
    headers = sendgrid.headers(body, timestamp="soon")
    assert (await client.post("/webhooks/sendgrid", content=body, headers=headers)).status_code == (
        400
    )
    mg = mailgun(mailgun_failure("kept@example.org"), timestamp="now!")
    assert (await client.post("/webhooks/mailgun", json=mg)).status_code == 400
    record = {"RecordType": "Bounce", "Type": "HardBounce", "Email": nul}
    assert (await client.post("/webhooks/postmark", json=record, auth=auth)).status_code == 400
    deep = b"[" * 20_000 + b"]" * 20_000
    for provider in ("ses", "postmark", "mailgun"):
        response = await client.post(f"/webhooks/{provider}", content=deep, auth=auth)
        assert response.status_code == 400, provider
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1


async def test_a_providers_permanent_bounce_for_a_policy_or_full_mailbox_does_not_erase(
    signed_hooks, db
) -> None:
    """Only the SMTP status decides when the provider reports one: a "permanent" bounce
    for a spam block (5.7.1) or a full mailbox (5.2.2) only counts as soft."""
    client, sns, sendgrid = signed_hooks
    auth = tuple(POSTMARK.split(":", 1))
    for address in ("ses@example.org", "pm@example.org", "sg@example.org", "mg@example.org"):
        await mailed(db, address)
    ses = ses_bounce("ses@example.org")
    message = json.loads(ses["Message"])
    message["bounce"]["bouncedRecipients"] = [
        {"emailAddress": "ses@example.org", "diagnosticCode": "smtp; 550 5.7.1 Blocked as spam"}
    ]
    ses = sns.sign({**ses, "Message": json.dumps(message)})
    responses = [
        await client.post("/webhooks/ses", json=ses),
        await client.post(
            "/webhooks/postmark",
            auth=auth,
            json={
                "RecordType": "Bounce",
                "Type": "HardBounce",
                "Email": "pm@example.org",
                "Details": "smtp;552 5.2.2 Mailbox full",
            },
        ),
    ]
    body = sendgrid_bounce("sg@example.org", "5.7.1")
    responses.append(
        await client.post("/webhooks/sendgrid", content=body, headers=sendgrid.headers(body))
    )
    mg = mailgun(mailgun_failure("mg@example.org", code=550, message="5.7.1 Rejected by policy"))
    responses.append(await client.post("/webhooks/mailgun", json=mg))
    # A policy status says nothing about the mailbox: nothing changes, not even a soft
    # count; a full mailbox counts as soft.
    assert [r.status_code for r in responses] == [200] * 4
    assert [r.json()["outcomes"] for r in responses] == [{}, {"counted": 1}, {}, {}]
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 4
    assert sorted((r[1], r[2], r[3]) for r in await counts(db)) == [("soft", "postmark", "5.2.2")]


async def test_postmark_only_from_the_allowed_networks_when_they_are_set(app_factory, db) -> None:
    """conftest's client address is 198.51.100.23."""
    await mailed(db, "pm@example.org")
    auth = tuple(POSTMARK.split(":", 1))
    record = {"RecordType": "Bounce", "Type": "HardBounce", "Email": "pm@example.org"}
    async with app_factory(
        webhook_postmark_auth=POSTMARK, webhook_postmark_ips=("192.0.2.0/24", "2001:db8::/32")
    ) as (_app, client):
        assert (await client.post("/webhooks/postmark", json=record, auth=auth)).status_code == 401
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1
    async with app_factory(
        webhook_postmark_auth=POSTMARK, webhook_postmark_ips=("198.51.100.0/24",)
    ) as (_app, client):
        response = await client.post("/webhooks/postmark", json=record, auth=auth)
    assert response.json()["outcomes"] == {"erased": 1}
