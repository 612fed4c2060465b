"""Shared by the bounce tests: the real samples and return paths."""

from __future__ import annotations

from pathlib import Path

from service.bounces import verp
from service.settings import Settings
from service.tokens import Tokens
from tests import support

SAMPLES = Path(__file__).parent / "data" / "bounces"
DOMAIN = "bounce.newsletter.test"


def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def tokens() -> Tokens:
    return Tokens((support.TEST_KEY,), 3600)


def return_path(settings: Settings, subscriber_id: int, campaign_id: int | None) -> str:
    path = verp.return_path(settings, tokens(), subscriber_id, campaign_id)
    assert path is not None
    return path


def with_return_path(raw: bytes, address: str) -> bytes:
    """A bounce as a mailbox keeps it: the envelope recipient in Delivered-To."""
    return f"Delivered-To: {address}\r\n".encode() + raw
