"""Dashboard sign-in: an admin token exchanged for a session cookie, and CSRF tokens.

The cookie holds a random session id signed with `SECRET_KEYS` (itsdangerous, with a
timestamp, so an old cookie fails even before the database is asked). The server keeps
only the id's sha256, the form token and the expiry (`admin_sessions`), which is what
makes sign-out and expiry hold for a copied cookie too, and lets every replica check a
session. Each session has one synchroniser token that every state-changing form carries.

The sign-in form itself is protected with a double-submit token: a short-lived signed
cookie whose value must come back in the form.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from itsdangerous import BadData, TimestampSigner
from starlette.requests import ClientDisconnect, Request
from starlette.responses import RedirectResponse, Response

from service.admin.auth import Attempt, check_token
from service.admin.dashboard.render import problem
from service.db.queries import queries

SESSION_COOKIE = "nl_admin"
LOGIN_COOKIE = "nl_admin_login"
COOKIE_PATH = "/admin"
SESSION_SALT = "newsletter.admin-session"
LOGIN_SALT = "newsletter.admin-login"
LOGIN_FORM_MAX_AGE = 3600
FORM_LIMIT = 16 * 1024  # bytes; campaign forms pass a larger limit

q = queries("dashboard")


class FormError(Exception):
    """A request body that is not a form we accept; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Session:
    id_hash: bytes
    csrf: str
    token_hash: bytes = b""  # sha256 of the admin token that opened it: the operator


def _signer(request: Request, salt: str) -> TimestampSigner:
    # itsdangerous signs with the last key and verifies with all: ours signs with the first.
    keys = list(reversed(request.app.state.settings.secret_keys))
    return TimestampSigner(keys, salt=salt, sep=".")


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def _cookie_kwargs(request: Request, max_age: int) -> dict:
    return {
        "max_age": max_age,
        "path": COOKIE_PATH,
        "httponly": True,
        "secure": not request.app.state.settings.dev,
        "samesite": "strict",
    }


async def read_form(request: Request, limit: int = FORM_LIMIT) -> dict[str, str]:
    """The url-encoded body as a dict (first value of each field), at most `limit` bytes."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise FormError(415, "Forms must be sent as application/x-www-form-urlencoded.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FormError(413, "The form is too large.")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise FormError(413, "The form is too large.")
    except ClientDisconnect:
        raise FormError(400, "The request ended early.") from None
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise FormError(400, "The form is not valid UTF-8.") from None
    form: dict[str, str] = {}
    for key, value in pairs:
        form.setdefault(key, value)
    return form


# -- sign-in form (double submit) ----------------------------------------------------
def new_login_token(request: Request) -> tuple[str, str]:
    """A token for the sign-in form and its signed twin for the short-lived cookie."""
    token = secrets.token_urlsafe(24)
    return token, _signer(request, LOGIN_SALT).sign(token).decode()


def login_token_matches(request: Request, presented: str) -> bool:
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not cookie or not presented or len(cookie) > 200:
        return False
    try:
        expected = _signer(request, LOGIN_SALT).unsign(cookie, max_age=LOGIN_FORM_MAX_AGE).decode()
    except BadData:
        return False
    return hmac.compare_digest(expected.encode(), presented.encode())


def set_login_cookie(request: Request, response: Response, value: str) -> None:
    response.set_cookie(LOGIN_COOKIE, value, **_cookie_kwargs(request, LOGIN_FORM_MAX_AGE))


# -- sessions ----------------------------------------------------------------------
async def sign_in(request: Request, response: Response, admin_token: str) -> Attempt:
    """Starts a session when `admin_token` is one of ADMIN_TOKENS (compared in constant
    time, limited per client: service/admin/auth.py)."""
    settings = request.app.state.settings
    attempt = await check_token(request, admin_token)
    if not attempt:
        return attempt
    session_id = secrets.token_urlsafe(32)
    async with request.app.state.pool.acquire() as con:
        await q.delete_expired_sessions.execute(con)
        await q.insert_session.execute(
            con,
            id_hash=_sha256(session_id),
            token_hash=_sha256(admin_token),
            csrf=secrets.token_urlsafe(32),
            max_age=float(settings.session_max_age),
        )
    cookie = _signer(request, SESSION_SALT).sign(session_id).decode()
    response.set_cookie(
        SESSION_COOKIE, cookie, **_cookie_kwargs(request, int(settings.session_max_age))
    )
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return attempt


async def current_session(request: Request) -> Session | None:
    """The session of the request's cookie, or None (absent, forged, expired, signed out)."""
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not cookie or len(cookie) > 300:
        return None
    settings = request.app.state.settings
    try:
        session_id = (
            _signer(request, SESSION_SALT)
            .unsign(cookie, max_age=int(settings.session_max_age))
            .decode()
        )
    except BadData:
        return None
    id_hash = _sha256(session_id)
    async with request.app.state.pool.acquire() as con:
        row = await q.get_session.fetchrow(con, id_hash=id_hash)
    if row is None:
        return None
    # A token removed from ADMIN_TOKENS ends the sessions it opened.
    current = {_sha256(token) for token in settings.admin_tokens}
    if bytes(row["token_hash"]) not in current:
        return None
    return Session(id_hash=id_hash, csrf=row["csrf"], token_hash=bytes(row["token_hash"]))


async def sign_out(request: Request, session: Session, response: Response) -> None:
    async with request.app.state.pool.acquire() as con:
        await q.delete_session.execute(con, id_hash=session.id_hash)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)


def csrf_ok(session: Session, form: dict[str, str]) -> bool:
    return hmac.compare_digest(session.csrf.encode(), form.get("csrf", "").encode())


Page = Callable[[Request, Session], Awaitable[Response]]


def signed_in(page: Page) -> Callable[[Request], Awaitable[Response]]:
    """Runs `page` with the session; without one, GET goes to the sign-in form."""

    @functools.wraps(page)
    async def guarded(request: Request) -> Response:
        session = await current_session(request)
        if session is None:
            if request.method in ("GET", "HEAD"):
                return RedirectResponse("/admin/login", status_code=303)
            return problem(request, 403, "You are signed out. Sign in again and repeat.")
        return await page(request, session)

    return guarded
