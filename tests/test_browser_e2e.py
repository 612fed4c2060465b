"""The whole flow in a real browser: sign up, confirm, send from the dashboard, open, unsubscribe.

Headless Chromium from Debian's `chromium` and `chromium-driver` packages (`make
system-deps`), driven by selenium through the system chromedriver: nothing is downloaded
at test time. The service runs as a real uvicorn process with PUBLIC_URL pointing at it,
so the links in the emails lead the browser back to it; mail goes to the test SMTP sink.
A second test runs `newsletter dev` itself (its mail catcher and /dev/mail pages).
Screenshots of every page a newcomer meets, at 1280x900 and 390x844 (a phone), go to
`test-output/browser/`; a page that scrolls sideways at either width fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest

from tests import support

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
OUTPUT = support.ROOT / "test-output" / "browser"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
WAIT = 15.0
SIZES = ((1280, 900, False), (390, 844, True))  # desktop, and a phone (mobile viewport)
T = TypeVar("T")


def _skip_without_browser() -> None:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        pytest.skip(
            f"browser test skipped: {' and '.join(missing)} not installed "
            "(Debian packages chromium and chromium-driver; run `make system-deps` as root)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("browser test skipped: selenium is not installed (pip install -e '.[test]')")


class Browser:
    """A headless Chromium; every method is blocking and runs in a worker thread."""

    def __init__(self, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service

        options = Options()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument("--window-size=1280,900")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        # An explicit driver path: Selenium Manager is never consulted (and SE_OFFLINE is set).
        service = Service(CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        self.driver.set_page_load_timeout(WAIT)
        self.console: list[dict[str, Any]] = []

    def quit(self) -> None:
        self.driver.quit()

    # -- helpers ---------------------------------------------------------------------
    def collect_console(self) -> None:
        self.console += self.driver.get_log("browser")

    def open(self, url: str) -> None:
        self.driver.get(url)
        self.collect_console()

    def wait_for(self, condition: Callable[[], Any], what: str) -> Any:
        from selenium.common.exceptions import (
            NoSuchElementException,
            StaleElementReferenceException,
        )

        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            # Pages replace themselves (the confirm page posts itself): look again.
            with contextlib.suppress(StaleElementReferenceException, NoSuchElementException):
                value = condition()
                if value:
                    return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; page: {self.driver.current_url}")

    # Reads go through a script on whatever document is current, never through a node
    # handle: a handle found on a page that is then replaced (a form's answer, a page that
    # posts itself) fails with "Node with given id does not belong to the document", a
    # WebDriverException that is not a StaleElementReferenceException (issue 26).
    def text(self) -> str:
        return self.driver.execute_script("return document.body ? document.body.innerText : ''")

    def wait_text(self, text: str) -> None:
        self.wait_for(lambda: text in self.text(), repr(text))
        self.collect_console()

    def fill(self, css: str, value: str) -> None:
        element = self.driver.find_element("css selector", css)
        element.clear()
        element.send_keys(value)

    def click(self, css: str) -> None:
        """A click that stays on the page (a checkbox, a link to a new window)."""
        self.driver.find_element("css selector", css).click()

    def submit(self, css: str) -> None:
        """A click that loads another page: returns once the new document has replaced the
        one clicked in and has loaded (a marker set on the old window is gone from the new
        one, and readyState is complete), so nothing after it can read the old page."""
        from selenium.common.exceptions import WebDriverException

        self.driver.execute_script("window.__replacedByNavigation = true")
        self.driver.find_element("css selector", css).click()

        def loaded() -> bool:
            try:
                return self.driver.execute_script(
                    "return !window.__replacedByNavigation && document.readyState === 'complete'"
                )
            except WebDriverException:  # asked in the middle of the navigation: ask again
                return False

        self.wait_for(loaded, f"the page that {css} loads")

    def by_id(self, element_id: str) -> str | None:
        return self.driver.execute_script(
            "const e = document.getElementById(arguments[0]); return e ? e.innerText : null",
            element_id,
        )

    def form_value(self, css: str) -> str | None:
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); return e ? e.value : null", css
        )

    # -- screenshots -----------------------------------------------------------------
    def screenshot(
        self, name: str, width: int, mobile: bool, height: int = 900, reload: bool = True
    ) -> Path:
        """A full-page PNG at `width` CSS pixels; checks nothing overflows sideways.

        `reload=False` for the answer of a POST (a reload would post again)."""
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        if reload:
            self.driver.refresh()
        overflow = self.driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0, f"{name} at {width}px scrolls sideways by {overflow}px"
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {**metrics, "height": int(height)}
        )
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
        )
        path = OUTPUT / f"{name}-{width}.png"
        path.write_bytes(base64.b64decode(shot["data"]))
        self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        self.collect_console()
        return path

    def words_broken(self, css: str, width: int) -> list[str]:
        """The words inside `css` that the layout at `width` px splits across two lines
        ("Subscr/iption"): each word's text range must lie on one line."""
        metrics = {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        try:
            return self.driver.execute_script(
                """const broken = [];
                for (const cell of document.querySelectorAll(arguments[0])) {
                  const walker = document.createTreeWalker(cell, NodeFilter.SHOW_TEXT);
                  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
                    for (const m of node.data.matchAll(/\\S+/g)) {
                      const range = document.createRange();
                      range.setStart(node, m.index);
                      range.setEnd(node, m.index + m[0].length);
                      if (range.getClientRects().length > 1) broken.push(m[0]);
                    }
                  }
                }
                return broken;""",
                css,
            )
        finally:
            self.driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    def shoot(self, name: str, reload: bool = True) -> None:
        """The current page at both sizes."""
        for width, height, mobile in SIZES:
            shot = self.screenshot(name, width, mobile, height, reload)
            assert shot.stat().st_size > 3000, name


async def run(fn: Callable[..., T], *args: Any) -> T:
    """Selenium blocks; the SMTP sink lives on this event loop and must keep answering."""
    return await asyncio.to_thread(fn, *args)


@pytest.fixture
def browser_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    _skip_without_browser()
    monkeypatch.setenv("SE_OFFLINE", "true")
    OUTPUT.mkdir(parents=True, exist_ok=True)
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    yield profile


@pytest.fixture
async def browser(browser_profile: Path) -> AsyncIterator[Browser]:
    chrome = await run(Browser, browser_profile)
    try:
        yield chrome
    finally:
        await run(chrome.quit)


@pytest.fixture
async def service(
    database_url: str, smtp: support.SmtpSink
) -> AsyncIterator[support.ServiceProcess]:
    port = support.free_port()
    url = f"http://127.0.0.1:{port}"
    env = support.base_env(
        database_url,
        smtp.url,
        PUBLIC_URL=url,
        DEMO_PAGE="true",
        TRACKING_MODE="consent",
        SCANNER_WINDOW="600s",  # the confirm page's automatic post is refused: press the button
        MACHINE_OPEN_WINDOW="0s",  # the browser's open comes seconds after the send
        OUTBOX_POLL_INTERVAL="0.2s",
        LOG_LEVEL="warning",
    )
    process = support.ServiceProcess(env, port=port).start()
    try:
        await process.wait_ready()
        yield process
    finally:
        # In a thread: while stopping, the service says QUIT to the SMTP sink, which
        # lives on this event loop.
        await run(process.stop)


def link(text: str, base: str, path: str) -> str:
    match = re.search(rf"{re.escape(base)}/{path}/[^\s\"'<>]+", text)
    assert match, f"no {path} link in {text!r}"
    return match.group(0)


async def wait_for_total_opens(db: asyncpg.Connection, count: int) -> None:
    deadline = time.monotonic() + WAIT
    query = "SELECT opens FROM campaign_counts WHERE dimension = 'total'"
    while (await db.fetchval(query) or 0) < count:
        assert time.monotonic() < deadline, f"expected {count} opens in the counters"
        await asyncio.sleep(0.05)


EXPECTED_STATUS = re.compile(
    r"/subscribe - Failed to load resource: .* (400|405|413)"
    r"|/confirm/not-a-token - .* 400|/admin/campaigns - .* 422"
    r"|/manage/link/[A-Za-z0-9_-]+ - .* 410"
)


def console_problems(entries: list[dict[str, Any]]) -> list[str]:
    """Errors and CSP reports (a favicon 404 included), except the error statuses that
    the walk asks for on purpose (a refused form, GET /subscribe, a broken link)."""
    return [
        entry["message"]
        for entry in entries
        if (entry["level"] in ("SEVERE", "ERROR") or "Content Security Policy" in entry["message"])
        and not EXPECTED_STATUS.search(entry["message"])
    ]


async def test_signup_confirm_send_open_and_unsubscribe_in_a_real_browser(
    service: support.ServiceProcess,
    smtp: support.SmtpSink,
    db: asyncpg.Connection,
    browser: Browser,
) -> None:
    # (The browser is set up last so that it quits before the service stops: open
    # keep-alive connections would hold uvicorn's graceful shutdown.)
    url = service.url
    email = "reader@example.com"

    # 1. The demo signup page: the form, with tracking consent ticked. First a mistyped
    #    address (the browser lets it through, the server does not): the form comes back
    #    with the message beside the field and what was typed; then a form too large.
    await run(browser.open, url + "/subscribe")
    await run(browser.wait_text, "Sign-ups are sent by a form")
    await run(browser.shoot, "subscribe-get")
    await run(browser.open, url + "/")
    await run(browser.shoot, "signup-form")
    await run(browser.fill, "#email", "reader@example")
    await run(browser.fill, "#name", "Rea Der")
    await run(browser.click, "input[name=tracking]")
    await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
    await run(browser.wait_text, "Please check the form")
    assert await run(browser.form_value, "#email") == "reader@example"
    assert await run(browser.form_value, "#name") == "Rea Der"
    assert "@" in await run(browser.by_id, "email-error")
    outline = await run(
        browser.driver.execute_script,
        "return getComputedStyle(document.getElementById('email')).borderTopColor",
    )
    assert outline == "rgb(180, 35, 24)", outline  # the invalid field is outlined
    await run(browser.shoot, "signup-error", False)
    await run(
        browser.driver.execute_script,
        "document.getElementById('name').removeAttribute('maxlength');"
        "document.getElementById('name').value = 'x'.repeat(9000);",
    )
    await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
    await run(browser.wait_text, "larger than 8192 bytes")
    await run(browser.shoot, "signup-too-large", False)
    await run(browser.fill, "#email", email)
    await run(browser.fill, "#name", "Rea Der")
    await run(browser.click, "input[name=tracking]")
    await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
    await run(browser.wait_text, "Check your inbox")
    await run(browser.shoot, "check-inbox", False)

    # 2. The confirmation email, its link, and the button (the automatic post falls in
    #    the scanner window, so the page offers the button).
    (confirmation,) = await smtp.wait_for(1, timeout=WAIT)
    assert confirmation.to == email
    await run(browser.open, link(confirmation.part("plain"), url, "confirm"))
    await run(browser.wait_text, "press the button")
    # The sign-up's tick is only a wish: the page shows it, and the button grants it.
    assert (
        await db.fetchval("SELECT tracking_consent FROM subscribers WHERE email = $1", email)
        is False
    )
    await run(browser.shoot, "confirm")
    await run(browser.submit, "form[method=post] button[type=submit]")
    await run(browser.wait_text, "Subscription confirmed")
    await run(browser.shoot, "confirmed", False)
    row = await db.fetchrow(
        "SELECT status, tracking_consent FROM subscribers WHERE email = $1", email
    )
    assert (row["status"], row["tracking_consent"]) == ("active", True)
    await run(browser.open, url + "/confirm/not-a-token")
    await run(browser.wait_text, "Sign up again")
    await run(browser.shoot, "link-invalid")

    # 3. The dashboard: sign in, create a campaign, send it through the confirmation step.
    await run(browser.open, url + "/admin")
    await run(browser.wait_text, "Admin token")
    await run(browser.shoot, "sign-in")
    await run(browser.fill, "#token", support.ADMIN_TOKEN)
    await run(browser.submit, "form[action='/admin/login'] button")
    await run(browser.wait_text, "active subscriber")
    assert await run(browser.by_id, "active-count") == "1"
    await run(browser.open, url + "/admin/campaigns/new")
    await run(browser.fill, "#name", "E2E issue")
    await run(browser.fill, "#subject", "Hello from the browser test")
    await run(browser.fill, "#html", "<h1>Hello {{ name }</h1><p>Our news.</p>")  # a typo
    await run(browser.fill, "#text", "Hello {{ name }}\n\nOur news.")
    await run(browser.submit, "form[action='/admin/campaigns'] button")
    await run(browser.wait_text, "Please correct the fields marked below.")
    outline = await run(
        browser.driver.execute_script,
        "return getComputedStyle(document.getElementById('html')).borderTopColor",
    )
    assert outline == "rgb(180, 35, 24)", outline  # the invalid field is outlined
    await run(browser.shoot, "campaign-new-invalid", False)
    await run(browser.fill, "#html", "<h1>Hello {{ name }}</h1><p>Our news.</p>")
    await run(browser.submit, "form[action='/admin/campaigns'] button")
    await run(browser.wait_text, "Send or schedule…")
    # 3a. The preview step before "Send…": the subject, the HTML in its sandboxed frame
    #     (its pixel not fetched) and the text, as the sample person gets them.
    await run(browser.submit, "a.button[href$='/preview']")
    await run(browser.wait_text, "Subject: Hello from the browser test")
    assert "Hello Ada Lovelace" in (await run(browser.by_id, "preview-text") or "")
    await run(browser.driver.switch_to.frame, "preview-html")
    await run(browser.wait_text, "Hello Ada Lovelace")
    await run(browser.driver.switch_to.default_content)
    await run(browser.shoot, "campaign-preview")
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    await run(browser.submit, "a[href$='/send']")
    await run(browser.wait_text, "The list has 1 active subscriber.")
    await run(browser.shoot, "send-confirm")
    await run(browser.submit, "#confirm-send")
    await run(browser.wait_text, "1 email queued.")
    await run(browser.shoot, "campaign-after-send", False)  # sending, or already sent
    campaign_url = browser.driver.current_url.split("?")[0]

    # 4. The campaign email rendered by the browser from a file: the browser itself
    #    fetches the pixel, with its own user agent.
    messages = await smtp.wait_for(2, timeout=WAIT)
    mail = messages[1]
    assert mail.to == email and mail.message["Subject"] == "Hello from the browser test"
    assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    page = OUTPUT / "campaign-email.html"
    page.write_text(mail.part("html"), encoding="utf-8")
    await run(browser.open, page.as_uri())
    await run(browser.wait_text, "Hello Rea Der")
    user_agent = await run(browser.driver.execute_script, "return navigator.userAgent")
    deadline = time.monotonic() + WAIT
    while (recorded := await db.fetchval("SELECT user_agent FROM opens_readable")) is None:
        assert time.monotonic() < deadline, "the pixel fetch was not recorded"
        await asyncio.sleep(0.05)
    assert recorded == user_agent

    # 5. The dashboard shows the open.
    await run(browser.open, campaign_url)
    assert await run(browser.by_id, "open-count") == "1"
    assert await run(browser.by_id, "sent-count") == "1"
    assert "Machine opens are" in await run(browser.by_id, "machine-note")

    # 6. Screenshots of the dashboard's pages, the subscriber look-up among them.
    for name, target in (
        ("dashboard", url + "/admin"),
        ("campaigns", url + "/admin/campaigns"),
        ("campaign", campaign_url),
    ):
        await run(browser.open, target)
        await run(browser.shoot, name)
    await run(browser.open, url + "/admin/subscribers")
    await run(browser.fill, "#email", email)
    await run(browser.submit, "form[action='/admin/subscribers'] button")
    await run(browser.wait_text, f"Stored about {email}")
    assert "Rea Der" in await run(browser.text)
    await run(browser.shoot, "subscriber-lookup", False)

    # 7. The unsubscribe link in the email, and its button. Opening the email again is a
    #    second open of the same person: two opens, one unique.
    await run(browser.open, page.as_uri())
    await wait_for_total_opens(db, 2)
    await run(browser.click, "a[href*='/unsubscribe/']")
    if len(browser.driver.window_handles) > 1:
        await run(browser.driver.switch_to.window, browser.driver.window_handles[-1])
    await run(browser.wait_text, "Unsubscribe from the newsletter?")
    await run(browser.shoot, "unsubscribe")
    await run(browser.submit, "form[method=post] button[type=submit]")
    await run(browser.wait_text, "You are unsubscribed")
    await run(browser.shoot, "unsubscribed", False)

    # 8. The person is gone; the anonymous counts remain.
    assert await db.fetchval("SELECT count(*) FROM subscribers") == 0
    assert await db.fetchval("SELECT count(*) FROM opens") == 0
    await run(browser.open, url + "/admin")
    assert await run(browser.by_id, "active-count") == "0"
    day = await run(browser.driver.find_element, "css selector", "#daily-table tbody tr")
    assert (await run(lambda: day.text)).split()[1:] == ["1", "1", "100.0", "%", "1"]
    await run(browser.open, campaign_url)
    assert await run(browser.by_id, "open-count") == "2"
    # Both opens are Headless Chrome's: machine opens, which make no unique open (the
    # open rate counts people).
    total = "SELECT machine_opens FROM campaign_counts WHERE dimension = 'total'"
    assert await db.fetchval(total) == 2
    assert await run(browser.by_id, "unique-count") == "0"
    assert await run(browser.by_id, "sent-count") == "1"
    await run(browser.open, url + "/admin/subscribers")
    await run(browser.fill, "#email", email)
    await run(browser.submit, "form[action='/admin/subscribers'] button")
    await run(browser.wait_text, f"Nothing is stored about {email}")

    # 9. "This wasn't me": another sign-up, removed from its email's cancel link.
    await run(browser.open, url + "/")
    await run(browser.fill, "#email", "not-me@example.com")
    await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
    await run(browser.wait_text, "Check your inbox")
    messages = await smtp.wait_for(3, timeout=WAIT)
    await run(browser.open, link(messages[2].part("plain"), url, "cancel"))
    await run(browser.wait_text, "This wasn't you?")
    await run(browser.shoot, "cancel")
    await run(browser.submit, "form[method=post] button[type=submit]")
    await run(browser.wait_text, "Sign-up removed")
    assert browser.driver.title == "Sign-up removed"
    await run(browser.shoot, "cancel-done", False)

    # 10. No console errors and no CSP violations on any page of the walk.
    await run(browser.collect_console)
    problems = console_problems(browser.console)
    assert not problems, "\n".join(problems)


async def test_the_subscriber_sees_corrects_and_moves_their_data_in_a_real_browser(
    service: support.ServiceProcess,
    smtp: support.SmtpSink,
    db: asyncpg.Connection,
    browser: Browser,
) -> None:
    """The subscriber's own page: the footer link, a fresh link by email, the data page
    (name, address change through the new address's confirmation), the lost-email form,
    and the operator's subscriber list; screenshots of each at 1280 and 390 px."""
    from service.tokens import Tokens
    from tests import people

    url = service.url
    campaign = await people.add_campaign(db, "Spring news")
    person = await people.add_person(db, None, "mover@example.com", "browser", campaign)
    await db.execute("UPDATE rate_limits SET last_at = now() - interval '1 hour'")
    footer = f"{url}/manage/{Tokens((support.TEST_KEY,), 3600).manage(person.id)}"

    # 1. The footer's link: harmless actions only, no personal data on the page.
    await run(browser.open, footer)
    await run(browser.wait_text, "Manage your subscription")
    assert person.email not in await run(browser.text)
    assert "forwarded" in await run(browser.by_id, "why-fresh-link")
    await run(browser.shoot, "manage")
    await run(browser.submit, "#send-link")
    await run(browser.wait_text, "We emailed you a link to your data")
    await run(browser.shoot, "manage-link-sent", False)

    # 2. The fresh link from the email: the page's automatic post falls in the scanner
    #    window (600 s here), so the button opens it.
    (mail,) = await smtp.wait_for(1, timeout=WAIT)
    assert mail.to == person.email
    fresh = link(mail.part("plain"), url, "manage/link")
    await run(browser.open, fresh)
    await run(browser.wait_text, "Press the button to see what we keep about you")
    await run(browser.shoot, "manage-open")
    await run(browser.submit, "#open-data")
    await run(browser.wait_text, "What we keep about you")
    body = await run(browser.text)
    for needle in (person.email, person.name, "Thunderbird", "Subscription confirmed"):
        assert needle in body, needle
    await run(browser.shoot, "manage-data", False)
    # At 1280 px the wide tables (7-8 columns) break no word mid-word.
    assert await run(browser.words_broken, "table.reflow th, table.reflow td", 1280) == []

    # 3. Correct the name; ask for the address change.
    await run(browser.fill, "#name", "Moe Ver")
    await run(browser.submit, "#save-name")
    await run(browser.wait_text, "Your name is saved")
    assert await db.fetchval("SELECT name FROM subscribers") == "Moe Ver"
    await run(browser.fill, "#new_email", "moved@example.net")
    await run(browser.submit, "#change-address")
    await run(browser.wait_text, "We emailed moved@example.net")
    await run(browser.shoot, "manage-data-after-change", False)
    assert await db.fetchval("SELECT email FROM subscribers") == person.email

    # 4. The new address's confirmation: a button, then the old address is gone.
    (_, confirm_mail) = await smtp.wait_for(2, timeout=WAIT)
    assert confirm_mail.to == "moved@example.net"
    await run(browser.open, link(confirm_mail.part("plain"), url, "manage/address"))
    await run(browser.wait_text, "Confirm your new address")
    await run(browser.shoot, "manage-address-confirm")
    await run(browser.submit, "#confirm-address")
    await run(browser.wait_text, "Your address is changed")
    await run(browser.shoot, "manage-address-changed", False)
    assert await db.fetchval("SELECT email FROM subscribers") == "moved@example.net"
    assert await people.find_anywhere(db, (person.email,)) == {}

    # 5. The fresh link worked once; the form for people who lost their emails.
    await run(browser.open, fresh)
    await run(browser.wait_text, "This link has been used")
    await run(browser.shoot, "manage-link-used")
    await run(browser.open, url + "/manage")
    await run(browser.wait_text, "Enter the address you subscribed with")
    await run(browser.shoot, "manage-lost")
    await run(browser.fill, "#email", "someone-else@example.org")
    await run(browser.submit, "form[action='/manage'] button[type=submit]")
    await run(browser.wait_text, "If this address is subscribed")
    await run(browser.shoot, "manage-lost-sent", False)

    # 6. The operator's list of subscribers.
    await run(browser.open, url + "/admin")
    await run(browser.fill, "#token", support.ADMIN_TOKEN)
    await run(browser.submit, "form[action='/admin/login'] button")
    await run(browser.wait_text, "active subscriber")
    await run(browser.open, url + "/admin/subscribers/list")
    await run(browser.wait_text, "moved@example.net")
    await run(browser.shoot, "subscriber-list")

    await run(browser.collect_console)
    problems = console_problems(browser.console)
    assert not problems, "\n".join(problems)


@pytest.fixture
async def dev_service(tmp_path: Path) -> AsyncIterator[str]:
    """`newsletter dev` as a newcomer runs it (`make run`), in a directory of its own."""
    port = support.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "SMTP_"))}
    env["LOG_LEVEL"] = "warning"
    workdir = tmp_path / "dev"
    workdir.mkdir()
    log = (tmp_path / "dev.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "dev", "--port", str(port)],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while True:
                assert proc.poll() is None, (tmp_path / "dev.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(url + "/healthz", timeout=1)).status_code == 200:
                        break
                assert time.monotonic() < deadline, "newsletter dev did not start in a minute"
                await asyncio.sleep(0.2)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        await run(proc.wait, 30)
        log.close()


async def test_dev_mode_mail_catcher_pages_in_a_real_browser(
    dev_service: str, browser: Browser
) -> None:
    url = dev_service
    email = "newcomer@example.com"

    # 1. Sign up on the demo page; the confirmation email shows up in /dev/mail.
    await run(browser.open, url + "/")
    await run(browser.fill, "#email", email)
    await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
    await run(browser.wait_text, "Check your inbox")
    # In dev the page says where the email went, with a link to it.
    assert "built-in mail catcher" in await run(browser.by_id, "dev-mail")
    await run(browser.shoot, "dev-check-inbox", False)
    await run(browser.click, "#dev-mail a")
    await run(browser.wait_text, "Caught mail")
    await run(
        browser.wait_for,
        lambda: browser.open(url + "/dev/mail") or "Please confirm" in browser.text(),
        "the caught email",
    )

    # 2. The message page: links inside the preview open the page itself, not the frame.
    await run(browser.submit, "ul.mails a")
    await run(browser.wait_text, "HTML part")
    await run(browser.shoot, "dev-mail-message")
    frame = await run(browser.driver.find_element, "css selector", "iframe")
    await run(browser.driver.switch_to.frame, frame)
    await run(browser.click, "a[href*='/confirm/']")
    await run(browser.driver.switch_to.default_content)
    await run(browser.wait_for, lambda: "/confirm/" in browser.driver.current_url, "top navigation")
    await run(browser.wait_text, "Confirm your subscription")
    await run(browser.submit, "form[method=post] button[type=submit]")
    await run(browser.wait_text, "Subscription confirmed")

    # 3. Another address signs up, and again once its email is out: the second email is
    #    held back by RATE_CONFIRM_MIN_INTERVAL, and /dev/mail says so. (An email is
    #    caught a moment before its job is done; a sign-up in that moment rides on the
    #    job still queued and is not held back, so the second sign-up is repeated until
    #    the page lists it.)
    async def sign_up_twice() -> None:
        await run(browser.open, url + "/")
        await run(browser.fill, "#email", "twice@example.com")
        await run(browser.submit, "form[action='/subscribe'] button[type=submit]")
        await run(browser.wait_text, "Check your inbox")
        await run(browser.open, url + "/dev/mail")

    await sign_up_twice()
    await run(
        browser.wait_for,
        lambda: browser.open(url + "/dev/mail") or browser.text().count("Please confirm") == 2,
        "the second address's email",
    )
    deadline = time.monotonic() + WAIT
    while "Held back by the address limits" not in await run(browser.text):
        assert time.monotonic() < deadline, "the held-back email is not listed"
        await sign_up_twice()
    assert "twice@example.com" in await run(browser.text)
    assert browser.text().count("Please confirm") == 2  # no third email was sent
    await run(browser.shoot, "dev-mail")

    # 4. The sign-in page says where the generated token is.
    await run(browser.open, url + "/admin/login")
    await run(browser.wait_text, ".newsletter/secrets.json")
    await run(browser.shoot, "dev-sign-in")

    await run(browser.collect_console)
    problems = console_problems(browser.console)
    assert not problems, "\n".join(problems)
