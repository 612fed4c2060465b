"""The dashboard's pages: sign-in, list overview, campaigns, sending, subscriber requests.

Reads come from anonymous aggregates where they exist (list_daily, campaign counters),
so the pages keep their numbers after people unsubscribe or are erased. Writes go
through the campaign and erasure services that the admin API uses as well.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service.admin.dashboard import auth, charts, scheduling
from service.admin.dashboard.auth import FormError, Session, read_form, signed_in
from service.admin.dashboard.render import page, problem
from service.campaigns import check, schedule, store
from service.campaigns.stats import campaign_stats
from service.db.queries import queries
from service.mail.messages import MailContext
from service.outbox import breaker
from service.privacy import erasure
from service.web import pages

log = logging.getLogger("newsletter.dashboard")
q = queries("dashboard")

DAYS = 30
CAMPAIGN_LIMIT = 200
CAMPAIGN_FORM_LIMIT = 1024 * 1024
MAX_ID = 2**63 - 1
STYLESHEET = Path(__file__).resolve().parents[2] / "static" / "admin.css"
REFRESH_SECONDS = 3
UNIQUE_OPENS_NOTE = (
    "Unique opens count each person once, and only people who agreed to have their "
    "opens measured; the opens of everyone else are counted anonymously (in opens, "
    "not in unique opens), which is why unique opens can be fewer than the people "
    "who opened."
)
MACHINE_OPENS_NOTE = (
    "Machine opens are fetches of the tracking image that no person caused (Apple Mail "
    "Privacy Protection loading every image on arrival, Gmail's prefetch, security "
    "scanners checking new mail within seconds), so they are counted apart from the "
    "opens of people."
)


# What each refusal category (service/bounces/send_hooks.py) means to an operator, for a
# campaign the circuit breaker paused.
PAUSE_REASONS = {
    "sender": "the relay refuses our sender address (MAIL FROM or its domain: X.1.7, X.1.8)",
    "policy": "the relay's policy refuses the mail (X.7: spam block, authentication, relaying)",
    "throttle": "the relay throttles us or the sending quota is used up (421, 45x, X.4.5)",
    "mailbox": "the relay says many mailboxes do not exist (X.1.1): more likely its own "
    "recipient table than the list; nobody was erased",
    "system": "the receiving system is unavailable or full (X.3)",
    "routing": "the relay cannot route the mail (X.4)",
    "protocol": "the relay refuses the SMTP exchange (X.5)",
    "content": "the relay refuses the message's content (X.6)",
    "address": "the relay refuses addresses without naming the recipient",
    "mailbox_full": "many mailboxes are full or unavailable (X.2)",
    "other": "the relay refuses with answers that carry no status code",
}


CSRF_REFUSED = (
    "This form has expired or did not come from this dashboard. Reload the page and try again."
)


def _rate(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


async def form_or_problem(
    request: Request, session: Session, limit: int = auth.FORM_LIMIT
) -> dict[str, str] | Response:
    """The posted form when its CSRF token belongs to the session, else the error page."""
    try:
        form = await read_form(request, limit)
    except FormError as exc:
        return problem(request, exc.status, exc.message, csrf=session.csrf)
    if not auth.csrf_ok(session, form):
        return problem(request, 403, CSRF_REFUSED, csrf=session.csrf)
    return form


# -- static --------------------------------------------------------------------------
async def stylesheet(request: Request) -> Response:
    return Response(
        STYLESHEET.read_bytes(),
        media_type="text/css",
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


# -- sign-in -------------------------------------------------------------------------
def _login_page(request: Request, status_code: int = 200, error: str = "") -> Response:
    token, cookie = auth.new_login_token(request)
    configured = bool(request.app.state.settings.admin_tokens)
    response = page(
        request,
        "login.html",
        status_code=status_code if configured else 503,
        login_token=token,
        error=error,
        configured=configured,
        dev=request.app.state.settings.dev,
    )
    auth.set_login_cookie(request, response, cookie)
    return response


async def login_form(request: Request) -> Response:
    if await auth.current_session(request) is not None:
        return RedirectResponse("/admin", status_code=303)
    return _login_page(request)


async def login(request: Request) -> Response:
    if not request.app.state.settings.admin_tokens:
        return _login_page(request)
    try:
        form = await read_form(request)
    except FormError as exc:
        return problem(request, exc.status, exc.message)
    if not auth.login_token_matches(request, form.get("login_token", "")):
        return _login_page(request, 403, "The sign-in form expired. Please try again.")
    response = RedirectResponse("/admin", status_code=303)
    attempt = await auth.sign_in(request, response, form.get("token", "").strip())
    if not attempt:
        log.info("dashboard sign-in refused")
        if attempt.locked_for is None:
            return _login_page(request, 401, "That admin token is not valid.")
        limited = _login_page(
            request,
            429,
            f"Too many failed sign-ins. Please try again in {wait_in_words(attempt.locked_for)}.",
        )
        limited.headers["Retry-After"] = str(attempt.locked_for)
        return limited
    log.info("dashboard sign-in")
    return response


def wait_in_words(seconds: int) -> str:
    """The lock-out's wait as a person reads it: minutes (rounded up) under two hours,
    else hours (ADMIN_AUTH_WINDOW may be up to a day)."""
    minutes = max(1, -(-seconds // 60))
    if minutes < 120:
        return "1 minute" if minutes == 1 else f"{minutes} minutes"
    return f"{-(-minutes // 60)} hours"


@signed_in
async def logout(request: Request, session: Session) -> Response:
    form = await form_or_problem(request, session)
    if isinstance(form, Response):
        return form
    response = RedirectResponse("/admin/login", status_code=303)
    await auth.sign_out(request, session, response)
    return response


# -- list overview -------------------------------------------------------------------
def daily_rows(records: list[Any], today: date, days: int = DAYS) -> list[dict[str, Any]]:
    """One row per day of the period, oldest first, days without activity as zeros."""
    by_day = {r["day"]: r for r in records}
    rows = []
    for offset in range(days - 1, -1, -1):
        day = today - timedelta(days=offset)
        r = by_day.get(day)
        signups = r["signups"] if r else 0
        confirmations = r["confirmations"] if r else 0
        rows.append(
            {
                "day": day,
                "signups": signups,
                "confirmations": confirmations,
                "rate": _rate(confirmations, signups),
                "unsubscribes": r["unsubscribes"] if r else 0,
            }
        )
    return rows


@signed_in
async def overview(request: Request, session: Session) -> Response:
    today = datetime.now(UTC).date()
    since = today - timedelta(days=DAYS - 1)
    async with request.app.state.pool.acquire() as con:
        statuses = {r["status"]: r["n"] for r in await q.subscribers_by_status.fetch(con)}
        records = await q.list_daily_since.fetch(con, since=since)
        totals = await q.list_totals.fetchrow(con, since=since)
    rows = daily_rows(records, today)
    chart = charts.columns(
        "daily",
        f"Sign-ups, confirmations and unsubscribes per day, last {DAYS} days",
        [r["day"].strftime("%m-%d") for r in rows],
        [
            charts.Series("Sign-ups", [r["signups"] for r in rows], singular="Sign-up"),
            charts.Series(
                "Confirmations",
                [r["confirmations"] for r in rows],
                charts.PALETTE[2],
                singular="Confirmation",
            ),
            charts.Series(
                "Unsubscribes",
                [r["unsubscribes"] for r in rows],
                charts.PALETTE[1],
                singular="Unsubscribe",
            ),
        ],
        stacked=False,
        unit="events",
    )
    return page(
        request,
        "overview.html",
        csrf=session.csrf,
        active=statuses.get("active", 0),
        pending=statuses.get("pending", 0),
        days=DAYS,
        rows=list(reversed(rows)),
        totals=totals,
        total_rate=_rate(totals["confirmations"], totals["signups"]),
        chart=chart,
    )


# -- campaigns -----------------------------------------------------------------------
@signed_in
async def campaign_list(request: Request, session: Session) -> Response:
    async with request.app.state.pool.acquire() as con:
        records = await q.campaign_list.fetch(con, limit=CAMPAIGN_LIMIT)
    campaigns = [
        dict(
            r,
            open_rate=_rate(r["unique_opens"], r["sent"]),
            human_opens=r["opens"] - r["machine_opens"],
            scheduled=scheduling.local_time(request.app.state.settings, r["scheduled_at"]),
        )
        for r in records
    ]
    return page(request, "campaigns.html", csrf=session.csrf, campaigns=campaigns)


def path_campaign_id(request: Request) -> int | None:
    campaign_id = request.path_params["campaign_id"]
    return campaign_id if 0 < campaign_id <= MAX_ID else None


async def path_campaign(request: Request, con: Any) -> Any:
    campaign_id = path_campaign_id(request)
    return None if campaign_id is None else await q.campaign_by_id.fetchrow(con, id=campaign_id)


NO_CAMPAIGN = "There is no such campaign."


async def posted_campaign(
    request: Request, session: Session, limit: int = auth.FORM_LIMIT
) -> tuple[dict[str, str], Any] | Response:
    """(the posted form, the campaign of the path) for a campaign page's form, or the page
    that says what is wrong: the form's CSRF token, or no such campaign (404)."""
    form = await form_or_problem(request, session, limit)
    if isinstance(form, Response):
        return form
    async with request.app.state.pool.acquire() as con:
        campaign = await path_campaign(request, con)
    if campaign is None:
        return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
    return form, campaign


def stats_charts(stats: dict[str, Any]) -> dict[str, Any]:
    """The three charts of a campaign page and the rows of their tables."""
    by_hour = stats.get("by_hour") or []
    hours = sorted((h for h in by_hour if h["hour"] != "other"), key=lambda h: h["hour"])
    small_hours = [h for h in by_hour if h["hour"] == "other"]  # under STATS_MIN_BUCKET
    hour_rows = [
        {
            "hour": h["hour"],
            "human": h["opens"] - h["machine_opens"],
            "machine": h["machine_opens"],
        }
        for h in hours
    ]
    if hour_rows:  # a continuous axis: hours without opens are shown as gaps
        present = {h["hour"]: h for h in hour_rows}
        hour_rows = [
            present.get(hour, {"hour": hour, "human": 0, "machine": 0})
            for hour in range(0, max(present) + 1)
        ]
    hour_rows += [
        {"hour": "other", "human": h["opens"] - h["machine_opens"], "machine": h["machine_opens"]}
        for h in small_hours
    ]
    country_rows = [(c["country"] or "unknown", c["opens"]) for c in stats.get("by_country") or []]
    client_rows = [(c["client"] or "unknown", c["opens"]) for c in stats.get("by_client") or []]
    return {
        "hours": hour_rows,
        "countries": sorted(country_rows, key=lambda r: (-r[1], r[0])),
        "clients": sorted(client_rows, key=lambda r: (-r[1], r[0])),
        "hours_chart": charts.columns(
            "hours",
            "Opens by hour after the send: opens by people and machine opens",
            [f"{r['hour']}h" if r["hour"] != "other" else "other" for r in hour_rows],
            [
                charts.Series(
                    "Opens by people", [r["human"] for r in hour_rows], singular="Open by a person"
                ),
                charts.Series(
                    "Machine opens",
                    [r["machine"] for r in hour_rows],
                    charts.PALETTE[1],
                    singular="Machine open",
                ),
            ],
            unit="opens",
        ),
        "countries_chart": charts.bars("countries", "Opens by country", country_rows, unit="opens"),
        "clients_chart": charts.bars(
            "clients", "Opens by mail client", client_rows, unit="opens", color=charts.PALETTE[2]
        ),
    }


@signed_in
async def campaign_page(request: Request, session: Session) -> Response:
    async with request.app.state.pool.acquire() as con:
        campaign = await path_campaign(request, con)
        stats = (
            await campaign_stats(con, campaign["id"], request.app.state.settings.stats_min_bucket)
            if campaign
            else None
        )
        sending = bool(campaign) and await q.campaign_sending.fetchval(con, id=campaign["id"])
    if campaign is None or stats is None:
        return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
    queued = request.cookies.get(QUEUED_COOKIE, "")
    shown = page(
        request,
        "campaign.html",
        csrf=session.csrf,
        campaign=campaign,
        stats=stats,
        open_rate=_rate(stats.get("unique_opens", 0), campaign["sent"]),
        queued=int(queued) if queued.isdigit() and len(queued) < 10 else None,
        pause_reason=PAUSE_REASONS.get(campaign["paused_reason"] or "", ""),
        # No script under the CSP: while emails wait, the page reloads itself (meta refresh).
        sending=sending and not campaign["paused_at"],
        refresh=REFRESH_SECONDS if sending and not campaign["paused_at"] else 0,
        note=MACHINE_OPENS_NOTE,
        unique_note=UNIQUE_OPENS_NOTE,
        scheduled=scheduling.local_time(request.app.state.settings, campaign["scheduled_at"]),
        **stats_charts(stats),
    )
    if queued:
        shown.delete_cookie(
            QUEUED_COOKIE,
            path=request.url.path,
            httponly=True,
            secure=not request.app.state.settings.dev,
            samesite="strict",
        )
    return shown


@signed_in
async def new_campaign_form(request: Request, session: Session) -> Response:
    return page(
        request,
        "campaign_new.html",
        csrf=session.csrf,
        values={},
        errors={},
        variables=store.VARIABLES,
    )


@signed_in
async def create_campaign(request: Request, session: Session) -> Response:
    form = await form_or_problem(request, session, CAMPAIGN_FORM_LIMIT)
    if isinstance(form, Response):
        return form
    payload = {key: form.get(key, "") for key in ("name", "subject", "html", "text")}
    clean, errors = store.validate_campaign(payload)
    # Topics: slugs separated by commas or spaces; none, the whole list.
    slugs = form.get("topics", "").replace(",", " ").split()
    async with request.app.state.pool.acquire() as con:
        topic_ids, topics_error = await store.campaign_topics(con, {"topics": slugs or None})
        if topics_error:
            errors["topics"] = topics_error
        if errors:
            return page(
                request,
                "campaign_new.html",
                csrf=session.csrf,
                status_code=422,
                values={**payload, "topics": form.get("topics", "")},
                errors=errors,
                variables=store.VARIABLES,
            )
        campaign_id = await store.create_campaign(
            con,
            name=clean["name"],
            subject=clean["subject"],
            html=clean["html"],
            text=clean["text"],
            topic_ids=topic_ids,
        )
    log.info("campaign created from dashboard", extra={"campaign_id": campaign_id})
    return RedirectResponse(f"/admin/campaigns/{campaign_id}", status_code=303)


WELCOME_NOT_SENT = (
    "This campaign is a topic's welcome message: it is sent to each person who joins the "
    "topic, never sent or scheduled to the list."
)


@signed_in
async def send_confirm(request: Request, session: Session) -> Response:
    """The confirmation step: how many people the send will mail, before it happens."""
    async with request.app.state.pool.acquire() as con:
        campaign = await path_campaign(request, con)
        if campaign is None:
            return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
        if campaign["welcome"]:
            return problem(request, 409, WELCOME_NOT_SENT, csrf=session.csrf)
        topics = None
        if campaign["has_topics"]:  # its topics' active members, each once
            preview = await q.topic_send_preview.fetchrow(con, id=campaign["id"])
            topics = list(preview["topics"])
            active, already = preview["recipients"], preview["already"]
        else:
            active = await store.count_recipients(con, campaign["id"])
            already = await q.campaign_delivered_count.fetchval(con, id=campaign["id"])
        state = request.app.state
        context = MailContext(state.settings, state.tokens, state.templates)
        sample = await check.preview(con, context, campaign["id"])
    return page(
        request,
        "send_confirm.html",
        csrf=session.csrf,
        campaign=campaign,
        subject=sample.subject,
        topics=topics,
        active=active,
        already=already,
        to_send=max(active - already, 0),
        scheduled=scheduling.local_time(request.app.state.settings, campaign["scheduled_at"]),
        **scheduling.form_context(
            request.app.state.settings,
            datetime.now(UTC),
            request.query_params.get("schedule_error", ""),
        ),
    )


@signed_in
async def send(request: Request, session: Session) -> Response:
    posted = await posted_campaign(request, session)
    if isinstance(posted, Response):
        return posted
    _form, campaign = posted
    try:
        async with request.app.state.pool.acquire() as con:
            queued = await schedule.send_now(con, campaign["id"])
    except store.CampaignNotFound:  # deleted between the two statements
        return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
    except store.WelcomeCampaign:
        return problem(request, 409, WELCOME_NOT_SENT, csrf=session.csrf)
    log.info(
        "campaign send queued from dashboard",
        extra={"campaign_id": campaign["id"], "count": queued},
    )
    return queued_notice(request, campaign["id"], queued)


# The "N emails queued." notice is said once: a short-lived cookie for the campaign's page,
# read and deleted by it, not a query parameter that a reload or a bookmark repeats.
QUEUED_COOKIE = "queued_notice"


def queued_notice(request: Request, campaign_id: int, queued: int) -> Response:
    """The redirect after a send, carrying its notice for the next view of the page."""
    path = f"/admin/campaigns/{campaign_id}"
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(
        QUEUED_COOKIE,
        str(queued),
        max_age=60,
        path=path,
        httponly=True,
        secure=not request.app.state.settings.dev,
        samesite="strict",
    )
    return response


@signed_in
async def schedule_send(request: Request, session: Session) -> Response:
    """Schedules the send at the form's time in DASHBOARD_TIME_ZONE; a refused time goes
    back to the send page, which says why."""
    posted = await posted_campaign(request, session)
    if isinstance(posted, Response):
        return posted
    form, campaign = posted
    settings = request.app.state.settings
    at, error = scheduling.parse(settings, form.get("at", ""), datetime.now(UTC))
    if at is not None:
        try:
            async with request.app.state.pool.acquire() as con:
                await schedule.schedule(con, campaign["id"], at)
        except store.CampaignNotFound:
            return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
        except store.WelcomeCampaign:
            return problem(request, 409, WELCOME_NOT_SENT, csrf=session.csrf)
        except schedule.SendStarted:
            error = "started"
    if error:
        return RedirectResponse(
            f"/admin/campaigns/{campaign['id']}/send?schedule_error={error}", status_code=303
        )
    log.info("campaign scheduled from dashboard", extra={"campaign_id": campaign["id"]})
    return RedirectResponse(f"/admin/campaigns/{campaign['id']}", status_code=303)


@signed_in
async def unschedule_send(request: Request, session: Session) -> Response:
    """Cancels the scheduled send, unless it has started (the page then says so)."""
    posted = await posted_campaign(request, session)
    if isinstance(posted, Response):
        return posted
    _form, campaign = posted
    try:
        async with request.app.state.pool.acquire() as con:
            await schedule.unschedule(con, campaign["id"])
    except store.CampaignNotFound:
        return problem(request, 404, NO_CAMPAIGN, csrf=session.csrf)
    except store.WelcomeCampaign:
        return problem(request, 409, WELCOME_NOT_SENT, csrf=session.csrf)
    except schedule.SendStarted:
        message = "The scheduled send has started already; it can no longer be cancelled."
        return problem(request, 409, message, csrf=session.csrf)
    except schedule.NotScheduled:
        pass  # cancelled already (another tab): the page shows no schedule
    log.info("campaign schedule cancelled from dashboard", extra={"campaign_id": campaign["id"]})
    return RedirectResponse(f"/admin/campaigns/{campaign['id']}", status_code=303)


async def _pause_action(request: Request, session: Session, action: str) -> Response:
    """Resume or cancel a campaign (the circuit breaker's pause), then back to its page."""
    posted = await posted_campaign(request, session)
    if isinstance(posted, Response):
        return posted
    _form, campaign = posted
    async with request.app.state.pool.acquire() as con:
        if action == "resume":
            count = await breaker.resume(con, campaign["id"])
        else:
            count = await breaker.cancel(con, campaign["id"])
    log.info(f"campaign {action} from dashboard", extra={"campaign_id": campaign["id"]})
    done = "resumed" if action == "resume" else "cancelled"
    return RedirectResponse(
        f"/admin/campaigns/{campaign['id']}?{done}={count or 0}", status_code=303
    )


@signed_in
async def resume(request: Request, session: Session) -> Response:
    return await _pause_action(request, session, "resume")


@signed_in
async def cancel(request: Request, session: Session) -> Response:
    return await _pause_action(request, session, "cancel")


# -- subscriber requests (access and erasure) ---------------------------------------
def _email(form: dict[str, str]) -> str | None:
    email = form.get("email", "").strip()
    if not email or len(email) > 320 or "@" not in email:
        return None
    if any(ord(c) < 32 or c == "\x7f" for c in email):
        return None
    return email


@signed_in
async def subscribers_form(request: Request, session: Session) -> Response:
    return page(request, "subscribers.html", csrf=session.csrf, email="", found=None, error="")


async def _posted_email(
    request: Request, session: Session
) -> tuple[str, dict[str, str]] | Response:
    """The address of a posted subscriber form, or the page that says what is wrong."""
    form = await form_or_problem(request, session)
    if isinstance(form, Response):
        return form
    email = _email(form)
    if email is None:
        return page(
            request,
            "subscribers.html",
            csrf=session.csrf,
            status_code=400,
            email=form.get("email", "")[:320],
            found=None,
            error="Enter an email address, like name@example.com.",
        )
    return email, form


async def _posted_export(
    request: Request, session: Session
) -> tuple[str, dict[str, Any] | None] | Response:
    """The posted address and everything stored about it (None: nothing), or the problem."""
    posted = await _posted_email(request, session)
    if isinstance(posted, Response):
        return posted
    email, _form = posted
    async with request.app.state.pool.acquire() as con:
        data = await erasure.export_subscriber(con, email)
    return email, data


_ACRONYMS = {"ip": "IP", "os": "OS", "id": "ID"}


def _label(key: str) -> str:
    """`consent_text_version` -> "Consent text version", `ip` -> "IP"."""
    words = [_ACRONYMS.get(word, word) for word in key.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "\u2014"  # an em dash: nothing stored
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, str) and len(value) >= 19 and value[10] == "T" and value[:4].isdigit():
        return value[:19].replace("T", " ") + " UTC" * value.endswith(("+00:00", "Z"))
    if isinstance(value, dict | list):
        return json.dumps(value, default=str, ensure_ascii=False)
    return str(value)


def readable_export(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The access export as page sections: a record as label/value pairs, a list as a
    table. Generic over the export's keys, so a field added to the export shows up too."""
    sections = []
    for key, value in data.items():
        section: dict[str, Any] = {"id": key.replace("_", "-"), "title": _label(key)}
        if isinstance(value, dict):
            section["fields"] = [(_label(k), _cell(v)) for k, v in value.items()]
        elif isinstance(value, list) and all(isinstance(row, dict) for row in value):
            columns = list(dict.fromkeys(k for row in value for k in row))
            section["columns"] = [_label(c) for c in columns]
            section["rows"] = [[_cell(row.get(c)) for c in columns] for row in value]
        else:
            section["fields"] = [(_label(key), _cell(value))]
        sections.append(section)
    return sections


@signed_in
async def lookup(request: Request, session: Session) -> Response:
    posted = await _posted_export(request, session)
    if isinstance(posted, Response):
        return posted
    email, data = posted
    return page(
        request,
        "subscribers.html",
        csrf=session.csrf,
        email=email,
        found=data is not None,
        sections=readable_export(data) if data else [],
        error="",
    )


@signed_in
async def export(request: Request, session: Session) -> Response:
    """The access request: everything stored about the address, as a JSON download."""
    posted = await _posted_export(request, session)
    if isinstance(posted, Response):
        return posted
    _email_address, data = posted
    if data is None:
        return problem(request, 404, "Nothing is stored about that address.", csrf=session.csrf)
    log.info("subscriber export from dashboard")
    return pages.json_download(data, "subscriber-export.json")


@signed_in
async def erase(request: Request, session: Session) -> Response:
    """First post: the confirmation page; second post (confirm=yes): the erasure."""
    posted = await _posted_email(request, session)
    if isinstance(posted, Response):
        return posted
    email, form = posted
    if form.get("confirm") != "yes":
        return page(request, "erase_confirm.html", csrf=session.csrf, email=email)
    erased = await erasure.erase(request.app.state.pool, email=email, cause="operator")
    if erased:
        request.app.state.metrics.unsubscribes.labels(channel="dashboard").inc()
        log.info("subscriber erased from dashboard")
    return page(request, "erased.html", csrf=session.csrf, email=email, erased=erased)
