"""Bounces: what reading a returned message costs per format, and what the VERP return
path adds to each email sent, side by side in one run.

- `parse` of real samples (tests/data/bounces/): an RFC 3464 DSN is read from its
  report part; a non-standard bounce runs GNU Mailman's detectors (flufl.bounce) one
  after another; an ARF report; an auto-reply.
- `envelope_sender` per outbox job, with BOUNCE_DOMAIN (one AES-SIV encryption and a
  base32 encoding) and without (MAIL_FROM as it is).

    python -m bench.bench_bounces
"""

from __future__ import annotations

import statistics
import timeit
from pathlib import Path

from service.bounces.parse import parse
from service.bounces.send_hooks import envelope_sender
from service.settings import Settings
from service.tokens import Tokens

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "data" / "bounces"
ROUNDS = 5
CASES = {
    "parse dsn (postfix)": "lhost-postfix-01.eml",
    "parse dsn (office365)": "lhost-office365-11.eml",
    "parse heuristic (exim)": "lhost-exim-02.eml",
    "parse heuristic (gmail)": "lhost-gmail-01.eml",
    "parse arf": "arf-02.eml",
    "parse auto-reply": "rfc3834-01.eml",
    "parse not a bounce": "is-not-bounce-01.eml",
}


def _median_us(function, number: int) -> tuple[float, float]:
    values = [timeit.timeit(function, number=number) / number * 1e6 for _ in range(ROUNDS)]
    return statistics.median(values), min(values)


def main() -> list[dict]:
    rows = []
    for name, file in CASES.items():
        raw = (SAMPLES / file).read_bytes()
        median, low = _median_us(lambda r=raw: parse(r), 200)
        rows.append(
            {
                "bench": "bounces",
                "name": name,
                "median_us": round(median, 1),
                "min_us": round(low, 1),
                "bytes": len(raw),
            }
        )
    tokens = Tokens(("bench-secret-key-0123456789-abcdefghijklmnop",), 3600)
    job = {"kind": "campaign", "subscriber_id": 1_234_567, "campaign_id": 42}
    plain = Settings()
    verp = Settings(bounce_domain="bounce.example.com")
    base = None
    for name, settings in (("envelope_sender MAIL_FROM", plain), ("envelope_sender VERP", verp)):
        median, low = _median_us(lambda s=settings: envelope_sender(s, tokens, job, True), 50_000)
        base = base or median
        rows.append(
            {
                "bench": "bounces",
                "name": name,
                "median_us": round(median, 2),
                "min_us": round(low, 2),
                "ratio_to_mail_from": round(median / base, 2),
            }
        )
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
