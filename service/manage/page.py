"""The subscriber's own page: `/manage`, `/manage/{token}`, `/manage/link/{token}`, `/manage/me`.

Newsletters get forwarded, and a forwarded email carries its links. So the footer's link
(`/manage/{token}`, never expires) offers only what is harmless in anyone's hands:
unsubscribe, stop open tracking, and "email me a fresh link". What reveals or changes
personal data (seeing it, downloading it, correcting the name, changing the address,
allowing tracking) needs that fresh link (service/manage/links.py): mailed to the address
on file, it works once within MANAGE_LINK_MAX_AGE, and the page it opens carries a secret
in its forms (never in a URL) that lets it act for MANAGE_LINK_MAX_AGE more.

GET never changes anything (mail scanners fetch links); every change is a POST. The fresh
link's page posts itself with a script allowed by a per-response CSP nonce and has a
button for when scripts are off; an automatic post within SCANNER_WINDOW of the link's
issue is a scanner's and does not use the link up (as confirmation does).

`/manage` without a token is a form for people who lost their emails: it mails a fresh
link to an address that is subscribed, answers every address the same, no sooner than
SIGNUP_MIN_DURATION, and is rate-limited like sign-up (per client IP per hour, per
address per day).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import i18n
from service.db.queries import queries
from service.events import queue as events
from service.i18n import N_
from service.manage import address_change, links, view
from service.privacy import erasure, evidence
from service.settings import Settings
from service.signup import fields, subscribe
from service.topics import membership
from service.tracking import consent, policy
from service.web import clientinfo, pages, ratelimit

log = logging.getLogger("newsletter.manage")
q = queries("manage")

FORM_MAX_BYTES = 3072  # the forms, with the topic slugs of the topics forms


# -- shared ----------------------------------------------------------------------------
def _render(request: Request, template: str, status_code: int = 200, **context: Any) -> Response:
    settings: Settings = request.app.state.settings
    return pages.render(
        request,
        template,
        status_code=status_code,
        tracking_mode=settings.tracking_mode,
        minutes=round(settings.manage_link_max_age / 60),
        **context,
    )


def _ip(request: Request) -> str | None:
    return clientinfo.reduce_ip(clientinfo.client_ip(request), request.app.state.settings.ip_mode)


async def _form(request: Request) -> dict[str, str]:
    form = await request.form(max_files=0, max_fields=10 + membership.SLUGS_MAX)
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def _ticked(request: Request) -> list[str]:
    """The ticked topic checkboxes of the form `_form` read (starlette keeps it)."""
    form = await request.form(max_files=0, max_fields=10 + membership.SLUGS_MAX)
    return [v for v in form.getlist("topics") if isinstance(v, str)]


async def _ip_allowed(request: Request, con: Any, day_key: bytes) -> ratelimit.Verdict:
    """The sign-up's limit per client IP and hour, shared with it: both mail addresses
    someone typed."""
    ip = clientinfo.client_ip(request)
    if ip is None:
        return ratelimit.Verdict(True, 0)
    return await ratelimit.hit_ip(con, request.app.state.settings, day_key, ip)


def _too_many(request: Request, template: str, verdict: ratelimit.Verdict, **ctx: Any) -> Response:
    return _render(
        request,
        template,
        429,
        headers={"Retry-After": str(verdict.retry_after)},
        **ctx,
    )


# -- /manage: the form for people who lost their emails -------------------------------
async def lost_form(request: Request) -> Response:
    return _render(request, "manage_lost.html", state="ask", email="", error="")


async def lost_post(request: Request) -> Response:
    """Mails a fresh link if the address is subscribed; the same answer for any address."""
    started = time.monotonic()
    state = request.app.state
    settings: Settings = state.settings
    form = await _form(request)
    raw = form.get("email", "")
    email, error = address_change.clean_address(raw, "Please enter your email address.")
    if email is None:
        shown = fields.printable(raw.strip(), fields.EMAIL_MAX)
        error = subscribe.readable(pages.page_language(request), "email", error)
        return _render(request, "manage_lost.html", 400, state="ask", email=shown, error=error)
    async with state.pool.acquire() as con:
        day_key = await state.day_keys.today(con)
        verdict = await _ip_allowed(request, con, day_key)
        if not verdict.allowed:
            return _too_many(
                request, "manage_lost.html", verdict, state="limited", email="", error=""
            )
        await links.queue_link(con, settings, day_key, email)
    await subscribe.answer_no_sooner(started, settings)
    return _render(request, "manage_lost.html", state="sent", email="", error="")


# -- /manage/{token}: the footer's link, harmless actions only -------------------------
async def page(request: Request) -> Response:
    """What anyone holding the email may do; shows no personal data, changes nothing."""
    subscriber_id = links.verified(request, "verify_manage")
    if subscriber_id is None:
        return _render(request, "manage.html", 400, state="invalid", tracking=False)
    async with request.app.state.pool.acquire() as con:
        row = await q.subscriber.fetchrow(con, id=subscriber_id)
        topics = await _all_topics(con)
    if row is None:
        return _render(request, "manage.html", state="gone", tracking=False)
    return _render(
        request,
        "manage.html",
        state="ask",
        tracking=_tracked(request, row),
        topics=topics,
        lang=row["lang"],
    )


async def _all_topics(con: Any) -> list[Any]:
    """Every topic, for the footer page's "leave" form: all of them, never which ones
    the person is in (the page shows no personal data; a forwarded email opens it)."""
    return await membership.choices(con, 0)


def _tracked(request: Request, row: Any) -> bool:
    """Whether "stop open tracking" does anything for this subscriber: whether their
    emails carry a personal pixel."""
    return policy.personal_tracking(
        request.app.state.settings.tracking_mode,
        bool(row["tracking_consent"]),
        row["tracking_withdrawn_at"] is not None,
    )


async def act(request: Request) -> Response:
    """`action`: `unsubscribe`, `stop_tracking` or `send_link`."""
    form = await _form(request)
    subscriber_id = links.verified(request, "verify_manage")
    if subscriber_id is None:
        return _render(request, "manage.html", 400, state="invalid", tracking=False)
    action = form.get("action", "")
    state = request.app.state
    # The answer speaks the person's language (read before an erasure takes it).
    lang = await q.subscriber_lang.fetchval(state.pool, id=subscriber_id)
    if action == "unsubscribe":
        if await erasure.erase(state.pool, subscriber_id=subscriber_id, cause="unsubscribe"):
            state.metrics.unsubscribes.labels("manage").inc()
            log.info("unsubscribed", extra={"kind": "manage"})
        return pages.render(request, "unsubscribed.html", lang=lang)
    if action == "stop_tracking":
        async with state.pool.acquire() as con:
            await _stop_tracking(con, request, subscriber_id)
        return _render(request, "manage.html", state="tracking_off", tracking=False, lang=lang)
    if action == "leave_topics":
        # Leaving is as harmless as unsubscribing: the footer's link may do it. Joining
        # is consent and needs the fresh emailed link (the data page's `topics`).
        return await _leave_topics(request, subscriber_id, await _ticked(request))
    if action != "send_link":
        return _render(request, "manage.html", 400, state="bad_action", tracking=False, lang=lang)
    async with state.pool.acquire() as con:
        row = await q.subscriber.fetchrow(con, id=subscriber_id)
        if row is None or row["status"] != "active":
            return _render(request, "manage.html", state="gone", tracking=False)
        day_key = await state.day_keys.today(con)
        verdict = await _ip_allowed(request, con, day_key)
        if not verdict.allowed:
            return _too_many(request, "manage.html", verdict, state="limited", tracking=False)
        outcome = await links.queue_link(con, state.settings, day_key, row["email"], subscriber_id)
        # The holder of this page's link got an email from us: telling them when the
        # next can go says nothing they could not know (the /manage form says nothing).
        next_at = (
            await links.next_email_at(con, state.settings, day_key, row["email"])
            if outcome == links.HELD
            else None
        )
    if next_at is not None:
        held = getattr(state, "held_links", None)  # `newsletter dev` lists it at /dev/mail
        if held is not None:
            held.appendleft(
                {"email": row["email"], "asked_at": datetime.now(UTC), "next_at": next_at}
            )
        return _render(
            request,
            "manage.html",
            state="link_held",
            tracking=_tracked(request, row),
            next_at=next_at,
            wait=wait_in_words((next_at - datetime.now(UTC)).total_seconds()),
            lang=row["lang"],
        )
    return _render(
        request, "manage.html", state="link_sent", tracking=_tracked(request, row), lang=row["lang"]
    )


def wait_in_words(seconds: float) -> tuple[int, str]:
    """A wait as a person reads it, (count, "minutes" or "hours"): minutes under two
    hours, else hours (rounded up); the page words it in the person's language."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes < 120:
        return minutes, "minutes"
    return math.ceil(minutes / 60), "hours"


async def _leave_topics(request: Request, subscriber_id: int, slugs: list[str]) -> Response:
    """Leaves the ticked topics, with evidence; leaving the last one is the cancellation
    and erases everything, as a topic campaign's one-click does."""
    state = request.app.state
    who = evidence.Evidence.of(request, state.settings, "manage")
    async with state.pool.acquire() as con:
        async with con.transaction():
            if await q.lock_subscriber.fetchrow(con, id=subscriber_id) is None:
                return _render(request, "manage.html", state="gone", tracking=False)
            left = await membership.leave(
                con, subscriber_id, await membership.known(con, slugs), who
            )
            remaining = await membership.memberships(con, subscriber_id)
        row = await q.subscriber.fetchrow(con, id=subscriber_id)
        topics = await _all_topics(con)
    if left and not remaining:
        if await erasure.erase(state.pool, subscriber_id=subscriber_id, cause="unsubscribe"):
            state.metrics.unsubscribes.labels("manage").inc()
            log.info("unsubscribed", extra={"kind": "manage_topics"})
        return pages.render(request, "unsubscribed.html")
    return _render(
        request,
        "manage.html",
        state="topics_left",
        tracking=row is not None and _tracked(request, row),
        topics=topics,
    )


async def _stop_tracking(con: Any, request: Request, subscriber_id: int) -> bool | None:
    settings: Settings = request.app.state.settings
    return await consent.withdraw(
        con,
        subscriber_id,
        ip=_ip(request),
        user_agent=clientinfo.user_agent(request),
        consent_text_version=settings.consent_text_version,
        source="manage",
    )


# -- /manage/link/{token}: the fresh link, opened once ---------------------------------
def _open_page(request: Request, status_code: int = 200, *, auto: bool, state: str) -> Response:
    nonce = secrets.token_urlsafe(18) if auto else None
    csp = pages.CSP + (f"; script-src 'nonce-{nonce}'" if nonce else "")
    return pages.render(
        request,
        "manage_open.html",
        status_code=status_code,
        csp=csp,
        auto=auto,
        nonce=nonce,
        state=state,
        minutes=round(request.app.state.settings.manage_link_max_age / 60),
    )


async def link_get(request: Request) -> Response:
    """A button that opens the data page (and a script that presses it); changes nothing."""
    claim = links.verified(request, "verify_manage_link")
    if claim is None:
        return _open_page(request, 400, auto=False, state="invalid")
    subscriber_id, link_id = claim
    row = await q.link_state.fetchrow(
        request.app.state.pool, link_id=link_id, subscriber_id=subscriber_id, scanner_window=0.0
    )
    if row is None:
        return _open_page(request, 400, auto=False, state="invalid")
    if row["used"] or row["expired"]:
        return _open_page(request, 410, auto=False, state="used" if row["used"] else "expired")
    return _open_page(request, auto=True, state="ask")


async def link_post(request: Request) -> Response:
    """Uses the link up and answers the data page, whose forms carry the session."""
    form = await _form(request)
    claim = links.verified(request, "verify_manage_link")
    if claim is None:
        return _open_page(request, 400, auto=False, state="invalid")
    subscriber_id, link_id = claim
    auto = form.get("auto") == "1"
    async with request.app.state.pool.acquire() as con:
        outcome, secret = await links.open_link(
            con, request.app.state.settings, subscriber_id, link_id, auto=auto
        )
        if outcome == "opened":
            log.info("manage link opened", extra={"kind": "auto" if auto else "button"})
            return await _data_page(request, con, subscriber_id, secret or "")
    if outcome == "scanner_window":
        return _open_page(request, auto=False, state="ask")
    if outcome == "gone":
        return _open_page(request, 400, auto=False, state="invalid")
    return _open_page(request, 410, auto=False, state=outcome)


# -- /manage/me: the data page's forms ---------------------------------------------------
async def _data_page(
    request: Request,
    con: Any,
    subscriber_id: int,
    secret: str,
    status_code: int = 200,
    **extra: Any,
) -> Response:
    row = await q.subscriber.fetchrow(con, id=subscriber_id)
    export = None if row is None else await erasure.export_subscriber(con, row["email"])
    if export is None or export["subscriber"] is None:
        return _render(request, "manage.html", state="gone", tracking=False)
    settings: Settings = request.app.state.settings
    context: dict[str, Any] = {"message": "", "error": "", "name_error": "", "new_email": ""}
    context.update(extra)
    lang = i18n.spoken(row["lang"], settings.languages)
    # Our own messages in the person's language, with their values put in afterwards.
    values = context.pop("message_values", {})
    if context["message"]:
        context["message"] = i18n.gettext(lang, context["message"]) % values
    return _render(
        request,
        "manage_data.html",
        status_code,
        session=secret,
        subscriber=export["subscriber"],
        facts=view.subscription(
            export["subscriber"],
            settings.tracking_mode,
            row["tracking_withdrawn_at"] is not None,
            lang,
            i18n.NAMES[lang],
        ),
        sections=view.sections(export, lang),
        lang=lang,
        languages=[(code, i18n.NAMES[code]) for code in settings.languages],
        pending=export["address_changes"],
        topics=await membership.choices(con, subscriber_id),
        tracking_on=bool(export["subscriber"]["tracking_consent"]),
        tracking_withdrawn=row["tracking_withdrawn_at"] is not None,
        **context,
    )


def _session_over(request: Request) -> Response:
    return _open_page(request, 403, auto=False, state="session_over")


async def data_post(request: Request) -> Response:
    """`session` and `action`: `show`, `download`, `name`, `allow_tracking`,
    `stop_tracking`, `change_address`, `unsubscribe`."""
    form = await _form(request)
    secret = form.get("session", "")
    state = request.app.state
    action = form.get("action", "show")
    async with state.pool.acquire() as con:
        subscriber_id = await links.session_subscriber(con, secret)
        if subscriber_id is None:
            return _session_over(request)
        if action == "download":
            return await _download(con, subscriber_id)
        if action == "unsubscribe":
            lang = await q.subscriber_lang.fetchval(con, id=subscriber_id)
            if await erasure.erase(state.pool, subscriber_id=subscriber_id, cause="unsubscribe"):
                state.metrics.unsubscribes.labels("manage").inc()
                log.info("unsubscribed", extra={"kind": "manage"})
            return pages.render(request, "unsubscribed.html", lang=lang)
        handler = _ACTIONS.get(action)
        if handler is None:
            return await _data_page(
                request, con, subscriber_id, secret, 400, error=N_("Unknown action.")
            )
        extra = await handler(con, request, subscriber_id, form)
        status = 400 if extra.get("error") or extra.get("name_error") else 200
        return await _data_page(request, con, subscriber_id, secret, status, **extra)


async def _download(con: Any, subscriber_id: int) -> Response:
    """Everything stored, as the JSON file GDPR Art. 15 and 20 ask for."""
    row = await q.subscriber.fetchrow(con, id=subscriber_id)
    data = None if row is None else await erasure.export_subscriber(con, row["email"])
    return pages.json_download(data, "my-newsletter-data.json")


async def _show(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    return {}


async def _name(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    name, error = fields.clean_name(form.get("name", ""))
    if error:
        return {"name_error": error}
    async with con.transaction():
        if await q.lock_subscriber.fetchrow(con, id=subscriber_id) is not None:
            await q.set_name.execute(con, id=subscriber_id, name=name)
            await events.updated(con, subscriber_id)
    return {"message": N_("Your name is saved.") if name else N_("Your name is deleted.")}


async def _allow(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    if request.app.state.settings.tracking_mode != "consent":
        return {"error": N_("Open tracking needs no consent here.")}
    who = evidence.Evidence.of(request, request.app.state.settings, "manage")
    async with con.transaction():
        if await q.lock_subscriber.fetchrow(con, id=subscriber_id) is not None:
            await consent.grant(con, subscriber_id, who)
    return {"message": N_("We measure when you open our emails from the next one on.")}


async def _stop(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    await _stop_tracking(con, request, subscriber_id)
    return {"message": N_("Open tracking is off; we deleted the opens we had recorded for you.")}


async def _address(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    raw = form.get("new_email", "")
    new_email, error = address_change.clean_address(raw, N_("Please enter the new address."))
    if new_email is None:
        lang = await q.subscriber_lang.fetchval(con, id=subscriber_id)
        lang = i18n.spoken(lang, request.app.state.settings.languages)
        return {
            "error": subscribe.readable(lang, "email", error),
            "new_email": fields.printable(raw.strip(), fields.EMAIL_MAX),
        }
    state = request.app.state
    day_key = await state.day_keys.today(con)
    verdict = await _ip_allowed(request, con, day_key)
    if not verdict.allowed:
        return {"error": N_("Too many requests from your network. Please try again later.")}
    outcome = await address_change.request_change(
        con, state.settings, day_key, subscriber_id, new_email
    )
    if outcome == "same":
        return {"message": N_("That is your address already.")}
    # queued, taken, limited: one answer, which tells nobody whether the address is
    # someone's subscription.
    return {
        "message": N_(
            "We emailed %(email)s a link to confirm it. Until it is confirmed, "
            "the newsletter keeps coming to your current address."
        ),
        "message_values": {"email": new_email},
    }


async def _topics(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    """The topics ticked on the data page become the person's: joining is consent, so
    only this page (the fresh emailed link's) may join; each change has its evidence."""
    who = evidence.Evidence.of(request, request.app.state.settings, "manage")
    async with con.transaction():
        if await q.lock_subscriber.fetchrow(con, id=subscriber_id) is None:
            return {}
        wanted = await membership.known(con, await _ticked(request))
        await membership.set_topics(con, subscriber_id, wanted, who)
    return {"message": N_("Your topics are saved.")}


async def _language(con: Any, request: Request, subscriber_id: int, form: dict) -> dict[str, Any]:
    """The language of the person's pages and emails, among LANGUAGES."""
    lang = i18n.primary(form.get("lang", ""))
    if lang not in request.app.state.settings.languages:
        return {"error": N_("Choose one of the languages offered.")}
    async with con.transaction():
        await q.set_lang.execute(con, id=subscriber_id, lang=lang)
        await events.updated(con, subscriber_id)
    return {"message": N_("Your language is saved.")}


_ACTIONS = {
    "show": _show,
    "topics": _topics,
    "name": _name,
    "allow_tracking": _allow,
    "stop_tracking": _stop,
    "change_address": _address,
    "language": _language,
}


def routes() -> list[Route]:
    post = {"methods": ["POST"], "max_body_size": FORM_MAX_BYTES}
    return [
        Route("/manage", lost_form, methods=["GET"]),
        Route("/manage", lost_post, **post),
        Route("/manage/me", data_post, **post),
        Route("/manage/link/{token}", link_get, methods=["GET"]),
        Route("/manage/link/{token}", link_post, **post),
        *address_change.routes(),
        Route("/manage/{token}", page, methods=["GET"]),
        Route("/manage/{token}", act, **post),
    ]
