import io
import json
import logging

import httpx
import pytest

from service import logs
from tests import support
from tests.conftest import running

SECRET_LOOKING_PATH = "/o/c2VjcmV0LXRva2Vu.Zm9yZ2Vk.gif/alice@example.com"


@pytest.fixture
def captured_logs():
    """The service's JSON log output, restoring the logging setup afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    stream = io.StringIO()
    logs.configure("debug", stream=stream)
    yield stream
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


async def test_metrics_count_requests_by_route_template_never_by_raw_path(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/healthz")
    await client.get("/healthz")
    await client.get(SECRET_LOOKING_PATH)
    text = (await client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/healthz",status="200"} 2.0' in text
    assert 'route="unmatched",status="404"' in text
    assert "http_request_duration_seconds_bucket" in text
    assert "alice" not in text and "c2VjcmV0" not in text


async def test_metrics_use_the_template_of_parameterised_routes(make_settings) -> None:
    dev = make_settings(dev=True, smtp_url=f"smtp://127.0.0.1:{support.free_port()}")
    async with running(dev) as (_app, client):
        await client.get("/dev/mail/12345")
        text = (await client.get("/metrics")).text
    assert 'route="/dev/mail/{mail_id:int}",status="404"' in text
    assert "12345" not in text


async def test_each_request_is_one_json_line_with_route_status_and_duration(
    captured_logs, client: httpx.AsyncClient
) -> None:
    await client.get("/readyz", headers={"User-Agent": "Mozilla/5.0 (Secret Browser)"})
    entries = [e for e in lines(captured_logs) if e["event"] == "request"]
    assert entries, captured_logs.getvalue()
    entry = entries[-1]
    assert entry["route"] == "/readyz"
    assert entry["status"] == 200
    assert entry["method"] == "GET"
    assert isinstance(entry["duration_ms"], float)
    assert entry["level"] == "debug"  # health checks are quiet at info level


async def test_no_personal_data_or_token_reaches_the_log(
    captured_logs, client: httpx.AsyncClient
) -> None:
    await client.get(
        SECRET_LOOKING_PATH + "?email=bob@example.com",
        headers={"User-Agent": "Mozilla/5.0 (Secret Browser)", "X-Forwarded-For": "203.0.113.9"},
    )
    logging.getLogger("newsletter.test").warning(
        "something happened", extra={"email": "carol@example.com", "ip": "192.0.2.1", "count": 3}
    )
    output = captured_logs.getvalue()
    for personal in (
        "alice@example.com",
        "bob@example.com",
        "carol@example.com",
        "c2VjcmV0",
        "Secret Browser",
        "203.0.113.9",
        "192.0.2.1",
        "198.51.100.23",  # the test client's own address
    ):
        assert personal not in output
    last = lines(captured_logs)[-1]
    assert last["event"] == "something happened" and last["count"] == 3


def test_exceptions_are_logged_by_class_only(captured_logs) -> None:
    try:
        raise ValueError("duplicate key (email)=(dave@example.com)")
    except ValueError:
        logging.getLogger("newsletter.test").exception("insert failed")
    entry = lines(captured_logs)[-1]
    assert entry["exception"] == "ValueError"
    assert "dave@example.com" not in captured_logs.getvalue()
