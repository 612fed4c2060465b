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

import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any

import asyncpg

from service.campaigns import compile_template
from service.queries import queries
from service.settings import Settings
from service.tokens import Tokens

if TYPE_CHECKING:
    from service.emails import MailContext

q = queries("campaigns")

_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_LINE_BREAKS = re.compile(r"[\r\n]+")


def personal_tracking(settings: Settings, consent: bool, withdrawn: bool) -> bool:
    """Whether a subscriber's opens may be recorded as theirs, per TRACKING_MODE: with
    their consent (`consent`), unless they objected (`notice`), never (`off`)."""
    if settings.tracking_mode == "consent":
        return consent
    if settings.tracking_mode == "notice":
        return not withdrawn
    return False


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
    ) -> Links:
        """A personal pixel only where personal tracking applies; everyone else gets the
        campaign's own pixel, which names nobody, so nothing in front of the service (an
        ingress log, a CDN, a proxy) can tie an open to a person either."""
        base = settings.public_base
        personal = personal_tracking(settings, tracking_consent, tracking_withdrawn)
        if settings.tracking_mode == "off":
            pixel = ""
        elif personal:
            pixel = f"{base}/o/{tokens.pixel(subscriber_id, campaign_id)}.gif"
        else:
            pixel = f"{base}/o/{tokens.campaign_pixel(campaign_id)}.gif"
        return cls(
            unsubscribe_url=f"{base}/unsubscribe/{tokens.unsubscribe(subscriber_id)}",
            manage_url=f"{base}/manage/{tokens.manage(subscriber_id)}",
            pixel_url=pixel,
            tracking_url=f"{base}/tracking/{tokens.tracking(subscriber_id)}" if personal else "",
            personal=personal,
        )


class UnfoldedHeader(str):
    """A header value the email package writes on one line instead of folding it at 78
    characters (the URL cannot be broken, so it would go onto a continuation line).
    Relays that re-fold List-Unsubscribe break DKIM signatures; one line, well under the
    998-character limit, leaves them nothing to do. The email package calls `fold` on any
    header value that has a `name`."""

    name: str

    def __new__(cls, name: str, value: str) -> UnfoldedHeader:
        header = super().__new__(cls, value)
        header.name = name
        return header

    def fold(self, *, policy: Any) -> str:
        return f"{self.name}: {self}{policy.linesep}"


def list_unsubscribe_headers(links: Links) -> dict[str, str]:
    """RFC 2369 and RFC 8058: the mailbox provider POSTs `List-Unsubscribe=One-Click`."""
    return {
        "List-Unsubscribe": UnfoldedHeader("List-Unsubscribe", f"<{links.unsubscribe_url}>"),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def render(
    ctx: MailContext,
    *,
    subject: str,
    html: str,
    text: str,
    variables: dict[str, Any],
    links: Links,
) -> tuple[str, str, str]:
    """(subject, html, text) of one email: the operator's templates and our footer."""
    footer = {
        "links": links,
        "tracking_mode": ctx.settings.tracking_mode,
        "ip_mode": ctx.settings.ip_mode,
    }
    rendered_subject = compile_template(subject, False).render(**variables)
    rendered_html = compile_template(html, True).render(**variables)
    rendered_text = compile_template(text, False).render(**variables)
    html_footer = ctx.templates.get_template("campaign_footer.html").render(**footer)
    text_footer = ctx.templates.get_template("campaign_footer.txt").render(**footer)
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


async def compose(
    con: asyncpg.Connection, job: asyncpg.Record, ctx: MailContext
) -> EmailMessage | None:
    """The email of one claimed `campaign` outbox job, or None when it must not be sent
    (the subscriber left or is not active, or this delivery already went out)."""
    # Imported here: emails.py imports this module for its COMPOSERS table.
    from service.emails import build_message, recipient_header

    row = await q.mail_for_job.fetchrow(
        con, campaign_id=job["campaign_id"], subscriber_id=job["subscriber_id"]
    )
    if row is None:
        return None
    links = Links.mint(
        ctx.settings,
        ctx.tokens,
        job["subscriber_id"],
        job["campaign_id"],
        row["tracking_consent"],
        row["tracking_withdrawn"],
    )
    subject, html, text = render(
        ctx,
        subject=row["subject"],
        html=row["html"],
        text=row["text"],
        variables=template_variables(ctx.settings, row["email"], row["name"], links),
        links=links,
    )
    return build_message(
        ctx.settings,
        to=recipient_header(row["email"], " ".join((row["name"] or "").split()) or None),
        subject=subject,
        text=text,
        html=html,
        headers=list_unsubscribe_headers(links),
    )


def template_variables(
    settings: Settings, email: str, name: str | None, links: Links
) -> dict[str, Any]:
    """What an operator's template sees (documented in the README)."""
    return {
        "name": name or "",
        "email": email,
        "unsubscribe_url": links.unsubscribe_url,
        "manage_url": links.manage_url,
        "tracking_url": links.tracking_url,
        "public_url": settings.public_base,
    }
