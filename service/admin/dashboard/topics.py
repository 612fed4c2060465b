"""The dashboard's topics page: every topic with its count of subscribers, a form to add
one (with its welcome message) and a button to delete one, through the admin API's rules."""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from service.admin.dashboard.auth import Session, signed_in
from service.admin.dashboard.render import page
from service.admin.dashboard.views import form_or_problem
from service.campaigns import store as campaigns
from service.topics import store

log = logging.getLogger("newsletter.dashboard")

FORM_LIMIT = 1024 * 1024
TEXT_FIELDS = ("slug", "name", "description", "welcome_subject", "welcome_html", "welcome_text")


async def _listing(request: Request, session: Session, status_code: int = 200, **extra) -> Response:
    async with request.app.state.pool.acquire() as con:
        rows = await store.q.list_topics.fetch(con)
    context = {"values": {}, "errors": {}, **extra}
    return page(
        request,
        "topics.html",
        status_code=status_code,
        csrf=session.csrf,
        topics=[store.topic_json(row) for row in rows],
        **context,
    )


@signed_in
async def topic_list(request: Request, session: Session) -> Response:
    return await _listing(request, session)


@signed_in
async def create_topic(request: Request, session: Session) -> Response:
    form = await form_or_problem(request, session, FORM_LIMIT)
    if isinstance(form, Response):
        return form
    values = {key: form.get(key, "") for key in TEXT_FIELDS}
    payload = {
        "slug": values["slug"].strip(),
        "name": values["name"],
        "description": values["description"],
        "default": form.get("default") == "1",
    }
    clean, errors = store.validate_topic(payload, creating=True)
    welcome = None
    wanted = {f: values[f"welcome_{f}"] for f in ("subject", "html", "text")}
    if any(v.strip() for v in wanted.values()):
        checked, problems = campaigns.validate_campaign({"name": "welcome", **wanted})
        errors.update({f"welcome_{k}": m for k, m in problems.items()})
        welcome = None if problems else {f: checked[f] for f in wanted}
    if not errors:
        async with request.app.state.pool.acquire() as con:
            if await store.create(con, clean, welcome) is None:
                errors["slug"] = "a topic has this slug already"
    if errors:
        return await _listing(request, session, 422, values=values, errors=errors)
    log.info("topic created from dashboard")
    return RedirectResponse("/admin/topics", status_code=303)


@signed_in
async def delete_topic(request: Request, session: Session) -> Response:
    form = await form_or_problem(request, session, 4096)
    if isinstance(form, Response):
        return form
    async with request.app.state.pool.acquire() as con:
        await store.delete(con, request.path_params["slug"])
    return RedirectResponse("/admin/topics", status_code=303)
