"""Checking a campaign before it goes: its preview and its test send.

Both render with the send's own code (`mail.personalise`, `mail.write`): the operator's
templates with a person's variables, the footer, the links and the pixel rules. A preview
is the email of one subscriber (by address) or of the sample person (`SAMPLE_ID`, who
does not exist, with the sample values of `store.VARIABLES`), as a person who allows open
tracking gets it: the sample's pixel and links name subscriber 0, so fetching that pixel
records nothing and its unsubscribe link erases nobody.

A test send is the sample person's email to an address the operator types, as an outbox
job of its own kind (`campaign_test`, sql/160): DKIM-signed and sent the real way, but
bound to no subscriber and to no campaign's send, so it is in no count, no stats, no
delivery, no circuit-breaker judgement. It is marked (`mail.TEST_SUBJECT_PREFIX`,
`mail.TEST_HEADER`) and has no pixel at all. Each operator (admin token) may send
CAMPAIGN_TEST_PER_HOUR tests of one campaign per clock hour.
"""

from __future__ import annotations

import dataclasses
import hashlib

import asyncpg
from email_validator import EmailNotValidError, validate_email

from service.campaigns import mail, store
from service.db.queries import queries
from service.mail.messages import MailContext
from service.mail.wire import OutgoingEmail
from service.settings import Settings
from service.web import ratelimit

q = queries("campaigns")

SAMPLE_ID = 0  # subscriber ids start at 1: links and pixels for 0 act on nobody
EMAIL_MAX = 254  # RFC 5321's longest forward path, less its angle brackets


class SubscriberNotFound(LookupError):
    pass


@dataclasses.dataclass(frozen=True)
class Preview:
    subject: str
    html: str
    text: str
    pixel_url: str  # in `html` ('' when none): the dashboard shows it without fetching it


async def _campaign(con: asyncpg.Connection, campaign_id: int) -> mail.Campaign:
    campaign = await q.campaign_for_mail.fetchrow(con, id=campaign_id)
    if campaign is None:
        raise store.CampaignNotFound(campaign_id)
    return mail.Campaign.of(campaign)


def sample_links(ctx: MailContext, campaign: mail.Campaign) -> mail.Links:
    """The sample person's links: those of a reader who allows open tracking."""
    return mail.Links.mint(
        ctx.settings,
        ctx.tokens,
        SAMPLE_ID,
        campaign.id,
        tracking_consent=True,
        topics=campaign.has_topics,
    )


async def preview(
    con: asyncpg.Connection, ctx: MailContext, campaign_id: int, email: str | None = None
) -> Preview:
    """The campaign as the subscriber `email` (None: the sample person) gets it. Raises
    CampaignNotFound, SubscriberNotFound."""
    campaign = await _campaign(con, campaign_id)
    if email is None:
        links = sample_links(ctx, campaign)
        address, name = store.SAMPLE_VARIABLES["email"], store.SAMPLE_VARIABLES["name"]
        lang = None  # the campaign's own texts, in the first of LANGUAGES
    else:
        row = None
        if 0 < len(email) <= EMAIL_MAX:
            row = await q.preview_subscriber.fetchrow(con, email=email)
        if row is None:
            raise SubscriberNotFound()
        links = mail.Links.mint(
            ctx.settings,
            ctx.tokens,
            row["id"],
            campaign_id,
            row["tracking_consent"],
            row["tracking_withdrawn"],
            topics=campaign.has_topics,
        )
        address, name, lang = row["email"], row["name"], row["lang"]
    _spoken, subject, html, text = mail.personalise(ctx, campaign, address, name, links, lang)
    return Preview(subject, html, text, links.pixel_url)


def clean_address(raw: object) -> tuple[str | None, str | None]:
    """(the address, None) or (None, what is wrong with it): a sign-up's check, no DNS."""
    if not isinstance(raw, str) or not raw.strip():
        return None, "must be an email address"
    if len(raw.strip()) > EMAIL_MAX:
        return None, f"must be at most {EMAIL_MAX} characters"
    try:
        return validate_email(raw.strip(), check_deliverability=False, strict=True).normalized, None
    except EmailNotValidError as exc:
        return None, str(exc)


def operator_of(admin_token: str) -> bytes:
    """Who sends a test, for the limit: the admin token (its sha256, as sessions keep it)."""
    return hashlib.sha256(admin_token.encode()).digest()


class TooMany(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


async def queue_test(
    con: asyncpg.Connection,
    settings: Settings,
    day_key: bytes,
    operator: bytes,
    campaign_id: int,
    address: str,
) -> int:
    """Queues one test copy to `address` (checked by `clean_address`); returns the job id.
    Raises CampaignNotFound, TooMany (this operator's tests of this campaign this hour)."""
    async with con.transaction():
        if not await q.campaign_exists.fetchval(con, id=campaign_id):
            raise store.CampaignNotFound(campaign_id)
        verdict = await ratelimit.hit_campaign_test(con, settings, day_key, operator, campaign_id)
        if not verdict.allowed:
            raise TooMany(verdict.retry_after)
        row = await q.queue_test.fetchrow(con, campaign_id=campaign_id, email=address)
    return int(row["id"])


async def compose_test(
    con: asyncpg.Connection, job: asyncpg.Record, ctx: MailContext
) -> OutgoingEmail | None:
    """The outbox composer of a `campaign_test` job: the sample person's email without
    its pixel, to the typed address, marked as a test (None: the campaign is gone)."""
    row = await q.test_job.fetchrow(con, id=job["id"])
    if row is None:
        return None
    found = await q.campaign_for_mail.fetchrow(con, id=row["test_campaign_id"])
    if found is None:
        return None
    campaign = mail.Campaign.of(found)
    links = dataclasses.replace(sample_links(ctx, campaign), pixel_url="")
    return mail.write(
        ctx,
        campaign,
        store.SAMPLE_VARIABLES["email"],
        store.SAMPLE_VARIABLES["name"],
        links,
        to=row["test_email"],
        test=True,
    )
