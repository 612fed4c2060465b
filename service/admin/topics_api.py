"""`/admin/api/topics`: the topics (lists) a person subscribes to, and their welcome.

Slugs are the topics' names outside (form fields, JSON lists, List-Id), so a slug never
changes; deleting a topic takes its memberships with it and keeps its welcome campaign's
statistics.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.admin.auth import require_admin
from service.campaigns import store as campaigns
from service.topics import store

log = logging.getLogger("newsletter.admin_api")

NO_STORE = {"Cache-Control": "no-store"}
MAX_BYTES = campaigns.MAX_REQUEST_BYTES
WELCOME_FIELDS = ("subject", "html", "text")


def _answer(content: Any, status_code: int = 200) -> JSONResponse:
    return JSONResponse(content, status_code=status_code, headers=NO_STORE)


def _invalid(errors: dict[str, str]) -> JSONResponse:
    detail = "some fields are not valid"
    return _answer({"error": "invalid", "detail": detail, "fields": errors}, 422)


async def _payload(request: Request) -> tuple[Any, Response | None]:
    body = await request.body()  # the route's max_body_size answers 413 past the limit
    try:
        return json.loads(body), None
    except (ValueError, RecursionError):
        detail = "the body must be a JSON object"
        return None, _answer({"error": "malformed", "detail": detail}, 400)


def _welcome(payload: dict[str, Any], errors: dict[str, str]) -> dict[str, str] | None:
    """The welcome message checked as a campaign's templates are (errors added as
    `welcome.subject`, …); None when the payload has none."""
    welcome = payload.get("welcome")
    if welcome is None:
        return None
    if not isinstance(welcome, dict) or set(welcome) - set(WELCOME_FIELDS):
        errors["welcome"] = "must be an object with subject, html and text"
        return None
    clean, problems = campaigns.validate_campaign({"name": "welcome", **welcome})
    for field, message in problems.items():
        errors[f"welcome.{field}"] = message
    return None if problems else {field: clean[field] for field in WELCOME_FIELDS}


@require_admin
async def list_topics(request: Request) -> Response:
    """Every topic with its count of active subscribers."""
    async with request.app.state.pool.acquire() as con:
        rows = await store.q.list_topics.fetch(con)
    return _answer({"topics": [store.topic_json(row) for row in rows]})


@require_admin
async def create_topic(request: Request) -> Response:
    payload, problem = await _payload(request)
    if problem is not None:
        return problem
    clean, errors = store.validate_topic(payload, creating=True)
    welcome = _welcome(payload, errors) if isinstance(payload, dict) else None
    if errors:
        return _invalid(errors)
    async with request.app.state.pool.acquire() as con:
        topic_id = await store.create(con, clean, welcome)
        row = await store.q.get_topic.fetchrow(con, slug=clean["slug"])
    if topic_id is None:
        return _answer({"error": "taken", "detail": "a topic has this slug already"}, 409)
    log.info("topic created", extra={"topic_id": topic_id})
    return _answer(store.topic_json(row), 201)


@require_admin
async def get_topic(request: Request) -> Response:
    async with request.app.state.pool.acquire() as con:
        row = await store.q.get_topic.fetchrow(con, slug=request.path_params["slug"])
    if row is None:
        return _answer({"error": "not_found", "detail": "no such topic"}, 404)
    return _answer(store.topic_json(row))


@require_admin
async def update_topic(request: Request) -> Response:
    payload, problem = await _payload(request)
    if problem is not None:
        return problem
    clean, errors = store.validate_topic(payload, creating=False)
    welcome = _welcome(payload, errors) if isinstance(payload, dict) else None
    if errors:
        return _invalid(errors)
    slug = request.path_params["slug"]
    async with request.app.state.pool.acquire() as con:
        found = await store.update(con, slug, clean, welcome)
        row = await store.q.get_topic.fetchrow(con, slug=slug) if found else None
    if row is None:
        return _answer({"error": "not_found", "detail": "no such topic"}, 404)
    return _answer(store.topic_json(row))


@require_admin
async def delete_topic(request: Request) -> Response:
    """`204` whether or not it existed (idempotent)."""
    async with request.app.state.pool.acquire() as con:
        if await store.delete(con, request.path_params["slug"]):
            log.info("topic deleted")
    return Response(status_code=204, headers=NO_STORE)


def routes() -> list[Route]:
    return [
        Route("/admin/api/topics", list_topics, methods=["GET"]),
        Route("/admin/api/topics", create_topic, methods=["POST"], max_body_size=MAX_BYTES),
        Route("/admin/api/topics/{slug}", get_topic, methods=["GET"]),
        Route("/admin/api/topics/{slug}", update_topic, methods=["PATCH"], max_body_size=MAX_BYTES),
        Route("/admin/api/topics/{slug}", delete_topic, methods=["DELETE"]),
    ]
