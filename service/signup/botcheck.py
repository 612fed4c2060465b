"""The bot check (ALTCHA_HMAC_KEY): a proof-of-work challenge, no cookies, no third party.

`GET /altcha` hands the sign-up form's widget (service/static/altcha.min.js) a challenge
signed with ALTCHA_HMAC_KEY; the widget finds its answer by brute force in the browser and
puts the solved payload in the form's `altcha` field. `POST /subscribe` then checks it
here, before anything is stored or sent: signature, expiry, answer (`verify`, no database),
and that no earlier sign-up spent the same challenge (`spend`: a row per spent challenge
in PostgreSQL, so the refusal holds across replicas).

The altcha library's PoW v2 (what the widget 3.x speaks): PBKDF2/SHA-256, and the
"deterministic" mode: the server picks the counter (the answer) at random in
[COUNTER_MIN, 2 * COUNTER_MIN) and signs the key it derives from it, so the browser's work
is bounded (it tries counters from 0 up) and verifying a payload is one HMAC, not one
key derivation. Creating a challenge costs one derivation (COST iterations).
The figures behind COST and COUNTER_MIN are in docs/guides/signup-form.md (bench/bench_altcha.py).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import altcha
import asyncpg
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.db.queries import queries
from service.settings import Settings
from service.web import pages

q = queries("botcheck")

FIELD = "altcha"
ALGORITHM = "PBKDF2/SHA-256"
# The work: about 1.5 * COUNTER_MIN key derivations of COST iterations in the browser
# (spread over its workers); chosen from bench/bench_altcha.py's measurements.
COST = 1000
COUNTER_MIN = 1000
# A solved payload is about 700 characters; anything far longer is not one.
PAYLOAD_MAX = 4096

MISSING = "Please wait for the check that you are not a robot to finish, then send the form again."
WRONG = "The check that you are not a robot did not work. Please send the form again."
EXPIRED = "The check that you are not a robot has expired. Please send the form again."
REPLAYED = "This check that you are not a robot was used already. Please send the form again."


@dataclass(frozen=True)
class Proof:
    """A verified payload: the challenge's signature names it in the replay store."""

    signature: str
    expires_at: int


def _key_secret(hmac_key: str) -> bytes:
    """The second key the library wants (it signs the derived key), from the one setting."""
    return hmac.new(hmac_key.encode(), b"altcha derived-key signature", hashlib.sha256).digest()


def challenge(settings: Settings) -> dict[str, Any]:
    """A fresh challenge as the widget reads it (JSON), valid for ALTCHA_MAX_AGE."""
    made = altcha.create_challenge(
        algorithm=ALGORITHM,
        cost=COST,
        counter=COUNTER_MIN + secrets.randbelow(COUNTER_MIN),
        expires_at=int(time.time() + settings.altcha_max_age),
        hmac_secret=settings.altcha_hmac_key,
        hmac_key_secret=_key_secret(settings.altcha_hmac_key),
    )
    return made.to_dict()


def verify(settings: Settings, value: Any) -> tuple[Proof | None, str | None]:
    """(the proof, None) for a good payload, (None, the field's message) for a bad one,
    (None, None) when the bot check is off. Touches no database: `spend` comes after."""
    if not settings.altcha_hmac_key:
        return None, None
    if not isinstance(value, str) or not value.strip():
        return None, MISSING
    if len(value) > PAYLOAD_MAX:
        return None, WRONG
    try:
        parsed = altcha.Payload.from_base64(value.strip())
        result = altcha.verify_solution(
            parsed, settings.altcha_hmac_key, hmac_key_secret=_key_secret(settings.altcha_hmac_key)
        )
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return None, WRONG  # not base64, not JSON, or not the payload's shape
    if result.expired:
        return None, EXPIRED
    if not result.verified:
        return None, WRONG
    expires_at = parsed.challenge.parameters.expires_at
    signature = parsed.challenge.signature
    # Signed by us, so both are ours; a challenge without an expiry was never issued here.
    if not isinstance(expires_at, int) or not isinstance(signature, str):
        return None, WRONG
    return Proof(signature=signature, expires_at=expires_at), None


async def spend(con: asyncpg.Connection, proof: Proof) -> bool:
    """True for the first sign-up that spends this challenge, False for any later one
    (on any replica: the row's primary key decides, also between concurrent requests)."""
    return await q.spend.fetchval(con, signature=proof.signature, expires_at=proof.expires_at) == 1


async def purge_spent(con: asyncpg.Connection) -> int:
    """Deletes the rows of expired challenges; the count. `spend` clears a few on every
    insert and each retention pass the rest (service/privacy/retention.py sits on a lower
    floor than this module, so it runs the same named query itself)."""
    status = await q.purge_spent.execute(con)
    return int(status.split()[-1])


# -- HTTP ----------------------------------------------------------------------------
async def serve_challenge(request: Request) -> Response:
    """`GET /altcha`: a challenge for the widget, or 404 when the bot check is off."""
    settings: Settings = request.app.state.settings
    if not settings.altcha_hmac_key:
        raise HTTPException(404)
    return JSONResponse(challenge(settings), headers={"Cache-Control": "no-store"})


WIDGET = "altcha.min.js"


@functools.cache
def _widget_script() -> bytes:
    return (pages.STATIC_DIR / WIDGET).read_bytes()


async def widget(request: Request) -> Response:
    """The widget's script, shipped with the service (service/static/altcha.README.md)."""
    return Response(
        _widget_script(),
        media_type="text/javascript",
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )


def routes(settings: Settings) -> list[Route]:
    """The challenge (with CORS for the configured origins: a form on the site fetches
    it from there) and the widget's script."""
    middleware = []
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET"],
                max_age=3600,
            )
        )
    return [
        Route("/altcha", serve_challenge, methods=["GET"], middleware=middleware),
        Route(f"/static/{WIDGET}", widget, methods=["GET"]),
    ]
