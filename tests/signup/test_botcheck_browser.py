"""The shipped ALTCHA widget in a real browser: on the demo page, under the page's own CSP,
it fetches a challenge from the service, solves it in its workers, and the form's post is
accepted (the Python library verifies what the JavaScript widget made).

Headless Chromium from Debian's `chromium` and `chromium-driver` (`make system-deps`),
through selenium; the app is served by uvicorn on loopback (a real socket), with the
test's database and SMTP sink.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path

import pytest
import uvicorn

from service.app import create_app
from tests import support

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KEY = "altcha-browser-key-0123456789-abcdefghijklmnop"
WAIT = 60.0  # a loaded 2-core machine; the solve itself takes about a second


def _browse(url: str) -> dict:
    """Opens the form, focuses the address (the widget starts), waits for the payload in
    the form's data, submits; the console's complaints and the answer's text."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory() as profile:
        options = Options()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(CHROMEDRIVER, log_output=str(Path(profile) / "chromedriver.log"))
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.get(url)
            driver.find_element("css selector", "#email").send_keys("ada@example.com")
            payload = None
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline and not payload:
                payload = driver.execute_script(
                    "return new FormData(document.querySelector('form')).get('altcha')"
                )
                time.sleep(0.1)
            console = driver.get_log("browser")
            driver.find_element("css selector", "button[type=submit]").click()
            deadline = time.monotonic() + WAIT
            text = ""
            while time.monotonic() < deadline and "Check your inbox" not in text:
                text = driver.execute_script("return document.body ? document.body.innerText : ''")
                time.sleep(0.1)
            return {"payload": payload, "console": console, "text": text}
        finally:
            driver.quit()


async def test_the_widget_solves_on_the_demo_page_and_the_sign_up_goes_through(
    make_settings, db, smtp
) -> None:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip("chromium and chromium-driver are not installed (make system-deps)")
    pytest.importorskip("selenium")
    port = support.free_port()
    settings = make_settings(
        altcha_hmac_key=KEY, demo_page=True, public_url=f"http://127.0.0.1:{port}"
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        result = await asyncio.to_thread(_browse, f"http://127.0.0.1:{port}/")
    finally:
        server.should_exit = True
        await serving
    refused = [e["message"] for e in result["console"] if "Refused" in e["message"]]
    assert refused == []  # nothing the CSP blocked
    assert result["payload"], "the widget produced no payload"
    assert "Check your inbox" in result["text"]
    [message] = await smtp.wait_for(1)
    assert message.recipients == ["ada@example.com"]
    assert await db.fetchval("SELECT count(*) FROM altcha_spent") == 1
