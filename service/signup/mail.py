"""The double opt-in email: the outbox composer of `confirm` jobs.

It is built when the job is claimed, not when the person signs up, so it always carries
fresh links and is dropped (None) once the subscriber is no longer pending: confirmed,
cancelled or erased meanwhile.
"""

from __future__ import annotations

from email.message import EmailMessage

import asyncpg

from service import i18n
from service.db.queries import queries
from service.i18n import N_
from service.mail.messages import MailContext, build_message, recipient_header

SUBJECT = N_("Please confirm your subscription")


async def compose(
    con: asyncpg.Connection, job: asyncpg.Record, ctx: MailContext
) -> EmailMessage | None:
    """The double opt-in email; None once the subscriber is no longer pending."""
    row = await queries("outbox").confirm_recipient.fetchrow(
        con, subscriber_id=job["subscriber_id"]
    )
    if row is None or row["status"] != "pending":
        return None
    base = ctx.settings.public_base
    lang = ctx.language(row["lang"])
    values = {
        "lang": lang,
        "name": row["name"],
        "confirm_url": f"{base}/confirm/{ctx.tokens.confirm(job['subscriber_id'])}",
        "cancel_url": f"{base}/cancel/{ctx.tokens.cancel(job['subscriber_id'])}",
        "hours": round(ctx.settings.confirm_max_age / 3600),
        "public_url": base,
        "tracking_mode": ctx.settings.tracking_mode,
        "tracking_requested": row["tracking_requested"],
    }
    return build_message(
        ctx.settings,
        to=recipient_header(row["email"], row["name"]),
        subject=i18n.gettext(lang, SUBJECT),
        text=ctx.templates.get_template("email/confirm.txt").render(values),
        html=ctx.templates.get_template("email/confirm.html").render(values),
        headers={"Content-Language": lang},
    )
