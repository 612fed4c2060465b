"""The one rule for a token read from a link's path (service/web/token_path.py): one
length limit, checked before any decoding, and the same refusal on every route."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.requests import Request

import service
from service import tokens
from service.web import token_path
from tests.manage_support import TOKENS


def _request(token: str) -> Request:
    scope = {"type": "http", "path": f"/manage/{token}", "headers": [], "path_params": {}}
    return Request({**scope, "path_params": {"token": token}})


def test_the_limit_is_the_token_formats_one() -> None:
    assert token_path.MAX_LENGTH is tokens.MAX_LENGTH
    # Every token the service issues fits, with room for the earlier dotted formats.
    issued = [TOKENS.confirm(2**63), TOKENS.manage_link(2**63, 2**63), TOKENS.pixel(1, 1)]
    assert max(map(len, issued)) < token_path.MAX_LENGTH


def test_a_token_over_the_limit_is_refused_before_it_is_decoded() -> None:
    seen: list[str] = []

    def verify(token: str) -> int:
        seen.append(token)
        return 7

    at_limit = "A" * token_path.MAX_LENGTH
    assert token_path.read(_request(at_limit)) == at_limit
    assert token_path.verified(_request(at_limit), verify) == 7
    over = "A" * (token_path.MAX_LENGTH + 1)
    assert token_path.read(_request(over)) is None
    assert token_path.verified(_request(over), verify) is None
    assert seen == [at_limit]


def test_a_token_that_does_not_verify_is_none_and_a_good_one_its_claim() -> None:
    good = TOKENS.manage(42)
    assert token_path.verified(_request(good), TOKENS.verify_manage) == 42
    assert token_path.verified(_request(good[:-1] + "B"), TOKENS.verify_manage) is None
    assert token_path.verified(_request(good), TOKENS.verify_unsubscribe) is None  # purpose


@pytest.mark.parametrize("spelling", ["A", "1.", "1.A."])
def test_every_verify_refuses_a_token_over_the_limit(spelling: str) -> None:
    token = (spelling * tokens.MAX_LENGTH)[: tokens.MAX_LENGTH + 1]
    for name in dir(TOKENS):
        if name.startswith("verify_") and name != "verify_bounce":  # bounce: exactly 45
            with pytest.raises(tokens.InvalidToken):
                getattr(TOKENS, name)(token)


def test_no_route_reads_a_path_token_but_through_token_path() -> None:
    """A route that read `path_params["token"]` itself would skip the limit and the log."""
    root = Path(service.__file__).parent
    readers = {
        path.relative_to(root).as_posix()
        for path in root.rglob("*.py")
        if re.search(r"path_params\[\"token\"\]|TOKEN_MAX|len\(token\) >", path.read_text())
    }
    # tokens.py checks the formats; the pixel's raw ASGI endpoint reads its scope.
    assert readers == {"web/token_path.py", "tokens.py"}
