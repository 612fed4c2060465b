"""The pixel's token check, before and after opaque tokens, side by side in one run.

`verify_pixel` runs on every pixel request. Earlier tokens were `<base-36 ids>.<HMAC-SHA1>`
checked with one OpenSSL HMAC call; now they are AES-SIV ciphertexts (one OpenSSL
decryption). Both are timed here in alternating rounds on the same machine, with the
legacy format still read by the same `Tokens` object (old links keep working).

    python -m bench bench_tokens
"""

from __future__ import annotations

import statistics
import timeit

from itsdangerous import Signer

from service.tokens import PIXEL, Tokens

KEY = "bench-secret-key-0123456789-abcdefghijklmnop"
ROUNDS = 7
NUMBER = 50_000


def _b36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, rest = divmod(number, 36)
        out = digits[rest] + out
        if not number:
            return out


def main() -> list[dict]:
    tokens = Tokens((KEY,), 3600)
    subscriber_id, campaign_id = 1_234_567, 42
    cases = {
        "hmac (earlier format)": Signer(KEY, salt=PIXEL, sep=".")
        .sign(f"{_b36(subscriber_id)}-{_b36(campaign_id)}")
        .decode(),
        "aes-siv personal": tokens.pixel(subscriber_id, campaign_id),
        "aes-siv campaign-only": tokens.campaign_pixel(campaign_id),
    }
    timings: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(ROUNDS):  # alternating, so drift hits every case alike
        for name, token in cases.items():
            seconds = timeit.timeit(lambda t=token: tokens.verify_pixel(t), number=NUMBER)
            timings[name].append(seconds / NUMBER * 1e6)
    base = statistics.median(timings["hmac (earlier format)"])
    rows = []
    for name, values in timings.items():
        median = statistics.median(values)
        rows.append(
            {
                "bench": "tokens",
                "name": f"verify_pixel {name}",
                "median_us": round(median, 2),
                "min_us": round(min(values), 2),
                "ratio_to_hmac": round(median / base, 2),
                "token_chars": len(cases[name]),
            }
        )
    return rows


if __name__ == "__main__":
    for row in main():
        print(row)
