"""The campaign pages' steps before "Send…": preview, test send and edit.

The preview page shows the subject, the HTML in a sandboxed frame and the text beside it,
as a chosen subscriber or the sample person gets them (service/campaigns/check.py). The
frame's document comes from its own URL under a CSP of its own: no script, no form, no
fetch but images, and the email's tracking pixel replaced by an empty image, so looking
at a subscriber's email in the dashboard records no open for them.
"""

from __future__ import annotations

import base64
import logging
from typing import Any
from urllib.parse import urlencode

import markupsafe
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from service.admin.dashboard import views
from service.admin.dashboard.auth import Session, signed_in
from service.admin.dashboard.render import CSP, page, problem
from service.campaigns import check, store
from service.mail.messages import MailContext

log = logging.getLogger("newsletter.dashboard")

# The preview page frames its own origin's preview document, and nothing else.
PAGE_CSP = CSP.replace("default-src 'none';", "default-src 'none'; frame-src 'self';")
# The framed email: sandboxed (no script, no form, no navigation of the dashboard), its
# own styles and images only; framed only by the dashboard.
FRAME_CSP = (
    "sandbox; default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
BLANK_GIF = "data:image/gif;base64," + base64.b64encode(
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
).decode("ascii")
TEST_NOTICE_COOKIE = "test_notice"
FORM_FIELDS = tuple(store.FIELDS)


def _context(request: Request) -> MailContext:
    state = request.app.state
    return MailContext(state.settings, state.tokens, state.templates)


def _email_param(request: Request) -> str | None:
    email = request.query_params.get("email", "").strip()
    return email or None


async def _preview(request: Request) -> check.Preview | str:
    """The preview of the path's campaign for `?email=`, or why there is none."""
    campaign_id = views.path_campaign_id(request)
    if campaign_id is None:
        return views.NO_CAMPAIGN
    try:
        async with request.app.state.pool.acquire() as con:
            return await check.preview(con, _context(request), campaign_id, _email_param(request))
    except store.CampaignNotFound:
        return views.NO_CAMPAIGN
    except check.SubscriberNotFound:
        return "No subscriber has that address."


@signed_in
async def preview_page(request: Request, session: Session) -> Response:
    async with request.app.state.pool.acquire() as con:
        campaign = await views.path_campaign(request, con)
    if campaign is None:
        return problem(request, 404, views.NO_CAMPAIGN, csrf=session.csrf)
    shown = await _preview(request)
    email = _email_param(request) or ""
    notice = request.cookies.get(TEST_NOTICE_COOKIE, "")
    response = page(
        request,
        "campaign_preview.html",
        csrf=session.csrf,
        csp=PAGE_CSP,
        status_code=200 if isinstance(shown, check.Preview) else 404,
        campaign=campaign,
        email=email[:320],
        preview=shown if isinstance(shown, check.Preview) else None,
        preview_error=shown if isinstance(shown, str) else "",
        frame_url=f"/admin/campaigns/{campaign['id']}/preview/html"
        + (f"?{urlencode({'email': email})}" if email else ""),
        test_to="",
        test_error="",
        tested=notice == "sent",
        editable=not campaign["first_sent_at"] and not campaign["welcome"],
    )
    if notice:
        response.delete_cookie(TEST_NOTICE_COOKIE, path=request.url.path)
    return response


@signed_in
async def preview_frame(request: Request, session: Session) -> Response:
    """The email's HTML alone, for the preview page's frame."""
    shown = await _preview(request)
    if isinstance(shown, str):
        return HTMLResponse(f"<p>{markupsafe.escape(shown)}</p>", 404, headers=_frame_headers())
    html = shown.html
    if shown.pixel_url:  # shown, never fetched: fetching it would record an open
        html = html.replace(str(markupsafe.escape(shown.pixel_url)), BLANK_GIF)
    return HTMLResponse(html, headers=_frame_headers())


def _frame_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": FRAME_CSP,
        "X-Frame-Options": "SAMEORIGIN",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


@signed_in
async def send_test(request: Request, session: Session) -> Response:
    """One test copy to the typed address; the preview page says it went, or why not."""
    posted = await views.posted_campaign(request, session)
    if isinstance(posted, Response):
        return posted
    form, campaign = posted
    address, error = check.clean_address(form.get("to", ""))
    state = request.app.state
    if address is not None:
        try:
            async with state.pool.acquire() as con:
                day_key = await state.day_keys.today(con)
                await check.queue_test(
                    con, state.settings, day_key, session.token_hash, campaign["id"], address
                )
        except store.CampaignNotFound:
            return problem(request, 404, views.NO_CAMPAIGN, csrf=session.csrf)
        except check.TooMany as exc:
            error = (
                f"This campaign's test sends for this hour are used up; try again in "
                f"{views.wait_in_words(exc.retry_after)}."
            )
    if error:
        return page(
            request,
            "campaign_preview.html",
            csrf=session.csrf,
            csp=PAGE_CSP,
            status_code=422 if address is None else 429,
            campaign=campaign,
            email="",
            preview=None,
            preview_error="",
            frame_url=f"/admin/campaigns/{campaign['id']}/preview/html",
            test_to=form.get("to", "")[:320],
            test_error=error,
            tested=False,
            editable=not campaign["first_sent_at"] and not campaign["welcome"],
        )
    log.info("campaign test queued from dashboard", extra={"campaign_id": campaign["id"]})
    path = f"/admin/campaigns/{campaign['id']}/preview"
    response = RedirectResponse(path, status_code=303)
    response.set_cookie(
        TEST_NOTICE_COOKIE,
        "sent",
        max_age=60,
        path=path,
        httponly=True,
        secure=not state.settings.dev,
        samesite="strict",
    )
    return response


def _variables() -> list[store.Variable]:
    return list(store.VARIABLES)


def form_page(
    request: Request,
    session: Session,
    *,
    campaign: Any = None,
    values: dict[str, str],
    errors: dict[str, str],
    status_code: int = 200,
) -> Response:
    """The campaign form (new or edit) with the template variables beside it."""
    return page(
        request,
        "campaign_new.html" if campaign is None else "campaign_edit.html",
        csrf=session.csrf,
        status_code=status_code,
        campaign=campaign,
        values=values,
        errors=errors,
        variables=_variables(),
    )


@signed_in
async def edit_form(request: Request, session: Session) -> Response:
    async with request.app.state.pool.acquire() as con:
        campaign = await views.path_campaign(request, con)
        row = campaign and await store.q.get_campaign.fetchrow(con, id=campaign["id"])
    if campaign is None or row is None:
        return problem(request, 404, views.NO_CAMPAIGN, csrf=session.csrf)
    if campaign["welcome"] or campaign["first_sent_at"]:
        return problem(request, 409, _refusal(campaign), csrf=session.csrf)
    values = {field: row[field] for field in FORM_FIELDS}
    values["topics"] = ", ".join(row["topics"] or [])
    return form_page(request, session, campaign=campaign, values=values, errors={})


def _refusal(campaign: Any) -> str:
    if campaign["welcome"]:
        return "This is a topic's welcome message: edit it on the Topics page."
    return "This campaign's send has started: it can no longer change."


@signed_in
async def edit(request: Request, session: Session) -> Response:
    """Saves the whole form (validated as creation is) until the first send starts."""
    posted = await views.posted_campaign(request, session, views.CAMPAIGN_FORM_LIMIT)
    if isinstance(posted, Response):
        return posted
    form, campaign = posted
    payload = {key: form.get(key, "") for key in FORM_FIELDS}
    clean, errors = store.validate_campaign(payload)
    slugs = form.get("topics", "").replace(",", " ").split()
    changes: dict[str, Any] = dict(clean)
    try:
        async with request.app.state.pool.acquire() as con:
            topic_ids, topics_error = await store.campaign_topics(con, {"topics": slugs or None})
            if topics_error:
                errors["topics"] = topics_error
            if errors:
                values = {**payload, "topics": form.get("topics", "")}
                return form_page(
                    request,
                    session,
                    campaign=campaign,
                    values=values,
                    errors=errors,
                    status_code=422,
                )
            changes["topics"] = topic_ids
            await store.update_campaign(con, campaign["id"], changes)
    except (store.WelcomeCampaign, store.SendStarted):
        return problem(request, 409, _refusal(campaign), csrf=session.csrf)
    except store.CampaignNotFound:
        return problem(request, 404, views.NO_CAMPAIGN, csrf=session.csrf)
    log.info("campaign edited from dashboard", extra={"campaign_id": campaign["id"]})
    return RedirectResponse(f"/admin/campaigns/{campaign['id']}/preview", status_code=303)
