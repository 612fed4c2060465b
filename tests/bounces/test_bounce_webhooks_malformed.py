"""POST /webhooks/{provider} with events that pass the provider's authentication but are
not the provider's format: 400 for each provider, never 401 (the request is the
provider's) nor 500, and nothing changes in the database. (The unsigned malformed bodies
are in test_bounce_webhooks.py.)"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests import people
from tests.bounces.test_bounce_webhooks import MAILGUN_KEY, POSTMARK, TOPIC, Sns

SENDGRID_KEY = ec.generate_private_key(ec.SECP256R1())
SENDGRID_PUBLIC = base64.b64encode(
    SENDGRID_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


@pytest.fixture
async def hooks(app_factory, db):
    await people.add_subscriber(db, "kept@example.org")
    sns = Sns()
    async with app_factory(
        webhook_ses_topic_arns=(TOPIC,),
        webhook_postmark_auth=POSTMARK,
        webhook_sendgrid_public_key=SENDGRID_PUBLIC,
        webhook_mailgun_signing_key=MAILGUN_KEY,
    ) as (app, client):
        app.state.sns.fetch = sns.fetch
        yield client, sns
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 1  # nothing erased
    assert await db.fetchval("SELECT count(*) FROM bounce_counts") == 0


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ses_notification(sns: Sns, message: str) -> dict:
    """A correctly signed SNS notification carrying `message` as its Message."""
    return sns.sign(
        {
            "Type": "Notification",
            "MessageId": secrets.token_hex(16),
            "TopicArn": TOPIC,
            "Message": message,
            "Timestamp": _now_iso(),
        }
    )


SES_MESSAGES = [
    "not json",
    '"a string"',
    "[1, 2]",
    json.dumps({"notificationType": "Bounce", "bounce": "x"}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": [1]}}),
    json.dumps({"notificationType": "Bounce", "bounce": {"bouncedRecipients": 5}}),
    json.dumps({"notificationType": "Complaint", "complaint": []}),
]


@pytest.mark.parametrize("message", SES_MESSAGES)
async def test_a_signed_ses_notification_that_is_not_an_ses_event_is_400(hooks, message) -> None:
    client, sns = hooks
    response = await client.post("/webhooks/ses", json=ses_notification(sns, message))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "malformed body"}


@pytest.mark.parametrize("body", [b"[]", b"[{}]", b'{"RecordType": 5}', b'"Bounce"'])
async def test_an_authenticated_postmark_body_that_is_not_a_record_is_400(hooks, body) -> None:
    client, _sns = hooks
    auth = tuple(POSTMARK.split(":", 1))
    response = await client.post("/webhooks/postmark", content=body, auth=auth)
    assert response.status_code == 400, response.text


def sendgrid_headers(body: bytes) -> dict[str, str]:
    timestamp = str(int(time.time()))
    signature = SENDGRID_KEY.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


@pytest.mark.parametrize(
    "body", [b"not json", b"\xff\xfe", b"{}", b'{"event": "bounce"}', b"[1]", b"[null]", b"null"]
)
async def test_a_signed_sendgrid_body_that_is_not_a_list_of_events_is_400(hooks, body) -> None:
    client, _sns = hooks
    response = await client.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(body))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "malformed body"}


def mailgun_signed(payload: dict) -> dict:
    timestamp, token = str(int(time.time())), secrets.token_hex(25)
    signature = hmac.new(
        MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    return {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        **payload,
    }


@pytest.mark.parametrize(
    "payload", [{}, {"event-data": "failed"}, {"event-data": [1]}, {"event-data": None}]
)
async def test_a_signed_mailgun_body_without_event_data_is_400(hooks, payload) -> None:
    client, _sns = hooks
    response = await client.post("/webhooks/mailgun", json=mailgun_signed(payload))
    assert response.status_code == 400, response.text
    assert response.json() == {"error": "malformed body"}


async def test_the_signing_here_is_accepted_for_a_well_formed_event(hooks) -> None:
    """The signatures above are valid: the same signing of well-formed events gives 200."""
    client, sns = hooks
    message = json.dumps({"notificationType": "Delivery", "mail": {}})
    assert (
        await client.post("/webhooks/ses", json=ses_notification(sns, message))
    ).status_code == 200
    auth = tuple(POSTMARK.split(":", 1))
    record = {"RecordType": "Delivery"}
    assert (await client.post("/webhooks/postmark", json=record, auth=auth)).status_code == 200
    body = b'[{"event": "delivered", "email": "kept@example.org"}]'
    response = await client.post("/webhooks/sendgrid", content=body, headers=sendgrid_headers(body))
    assert response.status_code == 200
    signed = mailgun_signed({"event-data": {"event": "delivered"}})
    assert (await client.post("/webhooks/mailgun", json=signed)).status_code == 200
