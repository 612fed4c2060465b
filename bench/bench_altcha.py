"""The bot check's costs: the widget's solve time in a throttled Chromium, the server's.

Browser: headless Chromium (Debian's chromium + chromium-driver, through selenium) loads a
page with the shipped widget (service/static/altcha.min.js) under the sign-up pages' CSP,
fetching challenges from service/signup/botcheck.py's `challenge()`. Each of CHALLENGES
challenges is timed from `verify()` to the `verified` event, with the widget's own
minimum duration set to 0 (what it adds is a pause, not work), and every payload is
checked by `botcheck.verify`, so a widget whose payloads the server cannot verify fails
the bench.

Phone-class CPU: CDP's `Emulation.setCPUThrottlingRate` (4-6x) slows the page's main
thread only. The proof of work runs in the widget's web workers, which it does not reach
(Chromium answers "Operation is only supported for pages, not workers" when it is sent
to a worker's session), and WebCrypto's PBKDF2 besides. So two figures: the widget under
CDP throttling with its default workers (what the main thread adds), and the work itself
on ONE worker, unthrottled, multiplied by 4 and 6: a phone core at a quarter to a sixth
of this machine's, and only one of its cores used (phones have 4-8, and the widget
starts one worker per core): a pessimistic bound. Server: `challenge()` and `verify()`
per call, in µs.

    python -m bench bench_altcha                  (RATE=4,6 CHALLENGES=20)
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import statistics
import tempfile
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import altcha

from service.settings import Settings
from service.signup import botcheck
from service.web import pages

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RATES = tuple(float(r) for r in os.environ.get("RATE", "4,6").split(","))
CHALLENGES = int(os.environ.get("CHALLENGES", "20"))
SETTINGS = Settings(altcha_hmac_key="bench-altcha-key-0123456789-abcdefghij")

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>altcha bench</title></head>
<body><form><altcha-widget id="w" challenge="/altcha" auto="off"{workers}
configuration='{{"humanInteractionSignature": false, "minDuration": 0}}'></altcha-widget>
</form><script src="/static/altcha.min.js"></script></body></html>"""

SOLVE = """
const done = arguments[arguments.length - 1];
const w = document.getElementById('w');
const t0 = performance.now();
const onVerified = (e) => { w.removeEventListener('verified', onVerified);
  done({ms: performance.now() - t0, payload: e.detail.payload}); };
w.addEventListener('verified', onVerified);
w.verify().catch((err) => done({error: String(err)}));
"""


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/altcha":
            body, kind = json.dumps(botcheck.challenge(SETTINGS)).encode(), "application/json"
        elif self.path == "/static/altcha.min.js":
            body, kind = (pages.STATIC_DIR / botcheck.WIDGET).read_bytes(), "text/javascript"
        elif self.path in ("/", "/?workers=1"):
            workers = ' workers="1"' if "workers" in self.path else ""
            body, kind = PAGE.format(workers=workers).encode(), "text/html"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Security-Policy", pages.CSP_WITH_ALTCHA)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def _server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()


def _driver(profile: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    service = Service(CHROMEDRIVER, log_output=str(profile / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_script_timeout(600)
    return driver


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def _solve_times(driver: Any, url: str, rate: float) -> list[float]:
    times = []
    for _ in range(CHALLENGES):
        driver.get(url)
        driver.execute_cdp_cmd("Emulation.setCPUThrottlingRate", {"rate": rate})
        result = driver.execute_async_script(SOLVE)
        if "error" in result:
            raise RuntimeError(f"the widget failed: {result['error']}")
        proof, problem = botcheck.verify(SETTINGS, result["payload"])
        if proof is None:
            raise RuntimeError(f"the server refused the widget's payload: {problem}")
        times.append(result["ms"])
    return times


def _row(name: str, workers: str, times: list[float]) -> dict:
    return {
        "bench": "altcha",
        "name": name,
        "challenges": len(times),
        "workers": workers,
        "median_ms": round(statistics.median(times)),
        "p90_ms": round(_percentile(times, 0.9)),
        "max_ms": round(max(times)),
    }


def browser_rows() -> list[dict]:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        print("bench_altcha: chromium/chromedriver not installed, browser part skipped")
        return []
    rows = []
    with _server() as url, tempfile.TemporaryDirectory() as profile:
        driver = _driver(Path(profile))
        try:
            cores = driver.execute_script("return navigator.hardwareConcurrency")
            default = f"default ({cores})"
            rows.append(_row("widget solve, unthrottled", default, _solve_times(driver, url, 1)))
            for rate in RATES:
                times = _solve_times(driver, url, rate)
                rows.append(_row(f"widget solve, CDP throttled {rate:g}x", default, times))
            one = _solve_times(driver, url + "?workers=1", 1)
            rows.append(_row("widget solve, unthrottled", "1", one))
            for rate in RATES:
                rows.append(
                    _row(f"phone-class bound: 1 worker x {rate:g}", "1", [t * rate for t in one])
                )
        finally:
            driver.quit()
    return rows


def server_rows() -> list[dict]:
    challenge = altcha.Challenge.from_dict(botcheck.challenge(SETTINGS))
    solution = altcha.solve_challenge(challenge)
    assert solution is not None
    payload = altcha.Payload(challenge, solution).to_base64()
    assert botcheck.verify(SETTINGS, payload)[0] is not None
    rows = []
    for name, call, number in (
        ("server challenge() (one PBKDF2 derivation)", lambda: botcheck.challenge(SETTINGS), 300),
        (
            "server verify() (HMACs, no derivation)",
            lambda: botcheck.verify(SETTINGS, payload),
            3000,
        ),
    ):
        per_call = [timeit.timeit(call, number=number) / number * 1e6 for _ in range(5)]
        rows.append(
            {
                "bench": "altcha",
                "name": name,
                "median_us": round(statistics.median(per_call), 1),
                "min_us": round(min(per_call), 1),
                "cost": botcheck.COST,
                "counter": f"{botcheck.COUNTER_MIN}-{2 * botcheck.COUNTER_MIN - 1}",
            }
        )
    return rows


def main() -> list[dict]:
    started = time.monotonic()
    rows = server_rows() + browser_rows()
    print(f"bench_altcha: {time.monotonic() - started:.0f}s")
    return rows
