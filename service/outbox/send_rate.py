"""SMTP_MAX_RATE, SMTP_MAX_PER_HOUR and SMTP_MAX_PER_DAY: how fast the whole deployment
hands emails to the relay, every process and lane together.

Relays cap their customers (Amazon SES starts at 14 emails a second, Google Workspace at
2,000 a day per user) and answer a sender over its cap with refusals; a lane that asks
first sends within the cap instead. The bucket is one PostgreSQL row (sql/133): before
each batch a lane reserves up to OUTBOX_BATCH tokens in one short statement, claims at
most that many jobs, and gives back what it did not send. Tokens refill at SMTP_MAX_RATE
a second up to one second's worth, so a burst never exceeds the rate by more than that.
Without any of the three settings there is no bucket and no statement at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from service.db.queries import queries
from service.settings import Settings

q = queries("send_rate")


@dataclass(frozen=True)
class Bucket:
    rate: float | None
    per_hour: int | None
    per_day: int | None

    @classmethod
    def of(cls, settings: Settings) -> Bucket | None:
        """The deployment's bucket, or None when no cap is set (nothing to ask)."""
        caps = (settings.smtp_max_rate, settings.smtp_max_per_hour, settings.smtp_max_per_day)
        return cls(*caps) if any(cap is not None for cap in caps) else None

    async def reserve(self, pool: asyncpg.Pool, want: int) -> tuple[int, float]:
        """(emails that may go now, seconds to wait when none may). With a rate, a lane
        waits for a quarter second's worth of tokens (at least one): four lanes then ask
        the row a few times a second, not once per token."""
        at_least = max(1.0, self.rate / 4) if self.rate is not None else 1.0
        row = await q.reserve.fetchrow(
            pool,
            want=want,
            at_least=at_least,
            rate=self.rate,
            per_hour=self.per_hour,
            per_day=self.per_day,
        )
        return row["granted"], row["wait_s"] or 0.0

    async def give_back(self, pool: asyncpg.Pool, n: int) -> None:
        if n > 0:
            await q.give_back.execute(pool, n=n, rate=self.rate)
