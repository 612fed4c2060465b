"""The outbox composer of a campaign email: the operator's templates rendered for one
subscriber, with that subscriber's own links.

Every campaign email carries (RFC 2369, RFC 8058, sender guidelines of the big mailbox
providers): a visible unsubscribe link in the footer of both parts, the headers
`List-Unsubscribe: <{PUBLIC_URL}/unsubscribe/{token}>` and `List-Unsubscribe-Post:
List-Unsubscribe=One-Click`, and at the end of the HTML body a 1x1 pixel: the
subscriber's own where personal open tracking applies (consent mode: they consented;
notice mode: they did not object), with a link to withdraw consent or object; else the
campaign's own pixel, which names nobody; none at all in TRACKING_MODE=off.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import jinja2
import markupsafe

from service import i18n
from service.campaigns.store import VARIABLES, compile_template
from service.db.queries import queries
from service.mail import wire
from service.mail.messages import MailContext, smtp_address
from service.mail.wire import OutgoingEmail
from service.settings import Settings
from service.tokens import Tokens
from service.tracking.policy import personal_tracking

q = queries("campaigns")

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class Links:
    """The links of one subscriber in one campaign."""

    unsubscribe_url: str
    manage_url: str  # the subscriber's own page (see, download, correct, change address)
    pixel_url: str  # empty in TRACKING_MODE=off: no pixel at all
    tracking_url: str  # withdraw consent (consent mode) or object (notice mode); or empty
    personal: bool  # the pixel names the subscriber (else it names only the campaign)

    @classmethod
    def mint(
        cls,
        settings: Settings,
        tokens: Tokens,
        subscriber_id: int,
        campaign_id: int,
        tracking_consent: bool,
        tracking_withdrawn: bool = False,
        topics: bool = False,
    ) -> Links:
        """A personal pixel only where personal tracking applies; everyone else gets the
        campaign's own pixel, which names nobody, so nothing in front of the service (an
        ingress log, a CDN, a proxy) can tie an open to a person either."""
        base = settings.public_base
        personal = personal_tracking(settings.tracking_mode, tracking_consent, tracking_withdrawn)
        if settings.tracking_mode == "off":
            pixel = ""
        elif personal:
            pixel = f"{base}/o/{tokens.pixel(subscriber_id, campaign_id)}.gif"
        else:
            pixel = f"{base}/o/{tokens.campaign_pixel(campaign_id)}.gif"
        # A topic campaign's link leaves its topics; any other erases (the plain token).
        unsubscribe = (
            tokens.unsubscribe_campaign(subscriber_id, campaign_id)
            if topics
            else tokens.unsubscribe(subscriber_id)
        )
        return cls(
            unsubscribe_url=f"{base}/unsubscribe/{unsubscribe}",
            manage_url=f"{base}/manage/{tokens.manage(subscriber_id)}",
            pixel_url=pixel,
            tracking_url=f"{base}/tracking/{tokens.tracking(subscriber_id)}" if personal else "",
            personal=personal,
        )


# Stand-ins for one subscriber's links while a footer is rendered once per variant;
# made of characters that neither HTML escaping nor the templates change.
_STAND_INS = {
    "unsubscribe_url": "@@unsubscribe_url@@",
    "manage_url": "@@manage_url@@",
    "pixel_url": "@@pixel_url@@",
    "tracking_url": "@@tracking_url@@",
}


@functools.lru_cache(maxsize=128)
def _footer_templates(
    templates: jinja2.Environment,
    tracking_mode: str,
    ip_mode: str,
    pixel: bool,
    tracking: bool,
    lang: str = i18n.SOURCE,
) -> tuple[str, str]:
    """Both footers rendered once for one kind of links (pixel or not, tracking link or
    not) in one language, with stand-ins where each subscriber's links go."""
    links = Links(
        unsubscribe_url=_STAND_INS["unsubscribe_url"],
        manage_url=_STAND_INS["manage_url"],
        pixel_url=_STAND_INS["pixel_url"] if pixel else "",
        tracking_url=_STAND_INS["tracking_url"] if tracking else "",
        personal=tracking,
    )
    values = {"links": links, "tracking_mode": tracking_mode, "ip_mode": ip_mode, "lang": lang}
    return (
        templates.get_template("campaign_footer.html").render(**values),
        templates.get_template("campaign_footer.txt").render(**values),
    )


def footers(ctx: MailContext, links: Links, lang: str = i18n.SOURCE) -> tuple[str, str]:
    """(HTML footer, text footer) of one email in `lang`: a template render costs more
    than the rest of the email, so each variant is rendered once and the links are put in
    (HTML escaped as the template would escape them)."""
    html, text = _footer_templates(
        ctx.templates,
        ctx.settings.tracking_mode,
        ctx.settings.ip_mode,
        bool(links.pixel_url),
        bool(links.tracking_url),
        lang,
    )
    for field, stand_in in _STAND_INS.items():
        url = getattr(links, field)
        if url:
            html = html.replace(stand_in, str(markupsafe.escape(url)))
            text = text.replace(stand_in, url)
    return html, text


def render(
    ctx: MailContext,
    *,
    subject: str,
    html: str,
    text: str,
    variables: dict[str, Any],
    links: Links,
    lang: str = i18n.SOURCE,
) -> tuple[str, str, str]:
    """(subject, html, text) of one email: the operator's templates and our footer in
    the email's language."""
    rendered_subject = compile_template(subject, False).render(**variables)
    rendered_html = compile_template(html, True).render(**variables)
    rendered_text = compile_template(text, False).render(**variables)
    html_footer, text_footer = footers(ctx, links, lang)
    # The footer and pixel go just before </body> when the operator wrote a whole
    # document, else at the very end.
    ends = list(_BODY_END.finditer(rendered_html))
    if ends:
        at = ends[-1].start()
        rendered_html = rendered_html[:at] + html_footer + rendered_html[at:]
    else:
        rendered_html = rendered_html + html_footer
    subject_line = _LINE_BREAKS.sub(" ", rendered_subject).strip()
    return subject_line, rendered_html, rendered_text.rstrip("\n") + "\n\n" + text_footer


async def compose_batch(
    con: asyncpg.Connection, jobs: list[asyncpg.Record], ctx: MailContext
) -> dict[int, OutgoingEmail | Exception | None]:
    """The emails of many claimed `campaign` jobs, by job id, from two queries: None
    where the email must not be sent, the exception where one email could not be built
    (that job is retried; the others go out)."""
    rows = await q.mail_for_jobs.fetch(
        con,
        campaign_ids=[job["campaign_id"] for job in jobs],
        subscriber_ids=[job["subscriber_id"] for job in jobs],
    )
    recipients = {(r["campaign_id"], r["subscriber_id"]): r for r in rows}
    wanted = sorted({r["campaign_id"] for r in rows})
    campaigns = {c["id"]: Campaign.of(c) for c in await q.campaign_templates.fetch(con, ids=wanted)}
    emails: dict[int, OutgoingEmail | Exception | None] = {}
    for job in jobs:
        row = recipients.get((job["campaign_id"], job["subscriber_id"]))
        if row is None:
            emails[job["id"]] = None
            continue
        try:
            emails[job["id"]] = build(ctx, job, campaigns[job["campaign_id"]], row)
        except Exception as exc:  # one broken email must not stop the batch
            emails[job["id"]] = exc
    return emails


@dataclass(frozen=True)
class Campaign:
    """A campaign as its emails need it: its own templates, its variants by language."""

    id: int
    subject: str
    html: str
    text: str
    has_topics: bool
    list_id: str | None
    translations: dict[str, dict[str, str]]

    @classmethod
    def of(cls, row: asyncpg.Record) -> Campaign:
        return cls(
            id=row["id"],
            subject=row["subject"],
            html=row["html"],
            text=row["text"],
            has_topics=row["has_topics"],
            list_id=row["list_id"],
            translations=json.loads(row["translations"]) if row["translations"] else {},
        )

    def variant(self, settings: Settings, stored_lang: str | None) -> tuple[str, dict[str, str]]:
        """(the email's language, its subject/html/text) for a recipient: their language's
        variant when the campaign has one, else the campaign's own texts, which are in the
        first language of LANGUAGES (docs/guides/languages.md)."""
        own = settings.languages[0] if settings.languages else i18n.SOURCE
        lang = i18n.spoken(stored_lang, settings.languages)
        if lang != own and lang in self.translations:
            return lang, self.translations[lang]
        return own, {"subject": self.subject, "html": self.html, "text": self.text}


def build(
    ctx: MailContext, job: asyncpg.Record, campaign: Campaign, row: asyncpg.Record
) -> OutgoingEmail:
    """One subscriber's email: their links minted, the templates rendered, the bytes
    written into the campaign's skeleton."""
    subscriber_id, campaign_id = job["subscriber_id"], job["campaign_id"]
    links = Links.mint(
        ctx.settings,
        ctx.tokens,
        subscriber_id,
        campaign_id,
        row["tracking_consent"],
        row["tracking_withdrawn"],
        topics=campaign.has_topics,
    )
    return write(ctx, campaign, row["email"], row["name"], links, lang=row["lang"])


def personalise(
    ctx: MailContext,
    campaign: Campaign,
    email: str,
    name: str | None,
    links: Links,
    lang: str | None = None,
) -> tuple[str, str, str, str]:
    """(language, subject, html, text) of the campaign as the person with these links and
    this stored language gets it: what a send, a preview and a test send all render
    (service/campaigns/check.py)."""
    spoken, texts = campaign.variant(ctx.settings, lang)
    subject, html, text = render(
        ctx,
        subject=texts["subject"],
        html=texts["html"],
        text=texts["text"],
        variables=template_variables(ctx.settings, email, name, links),
        links=links,
        lang=spoken,
    )
    return spoken, subject, html, text


def write(
    ctx: MailContext,
    campaign: Campaign,
    email: str,
    name: str | None,
    links: Links,
    *,
    lang: str | None = None,
    to: str | None = None,
    test: bool = False,
) -> OutgoingEmail:
    """The email of the campaign for the person `email`, to `to` (default: `email`); a
    test (service/campaigns/check.py) says so in its subject and a header."""
    spoken, subject, html, text = personalise(ctx, campaign, email, name, links, lang)
    address = email if to is None else to
    envelope, utf8 = (address, False) if address.isascii() else smtp_address(address)
    if test:
        subject = TEST_SUBJECT_PREFIX + subject
    data = ctx.skeleton(campaign.id).render(
        to=wire.recipient(envelope, utf8, None if test else name),
        subject=subject,
        text=text,
        html=html,
        list_unsubscribe=links.unsubscribe_url,
        list_id=list_id(ctx.settings, campaign.list_id),
        extra_headers=(TEST_HEADER,) if test else (),
        content_language=spoken,
    )
    return OutgoingEmail(recipients=(envelope,), smtputf8=utf8, data=data)


# A test send's marks: its subject starts with this, and it carries this header.
TEST_SUBJECT_PREFIX = "[Test] "
TEST_HEADER = "X-Newsletter-Test: yes"


def list_id(settings: Settings, slug: str | None) -> str | None:
    """RFC 2919's List-Id of a topic's emails: `<slug.host>`, the host of PUBLIC_URL
    being the namespace the operator controls (None for a campaign without topics)."""
    if slug is None:
        return None
    host = urlsplit(settings.public_base).hostname or "localhost"
    return f"<{slug}.{host}>"


def template_variables(
    settings: Settings, email: str, name: str | None, links: Links
) -> dict[str, Any]:
    """What an operator's template sees: exactly the names of `store.VARIABLES`
    (documented in docs/guides/campaigns.md, "Templates", and shown beside the form)."""
    values = {
        "name": name or "",
        "email": email,
        "unsubscribe_url": links.unsubscribe_url,
        "manage_url": links.manage_url,
        "tracking_url": links.tracking_url,
        "public_url": settings.public_base,
    }
    return {variable.name: values[variable.name] for variable in VARIABLES}
