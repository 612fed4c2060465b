"""A year of list traffic for bench/bench_scale.py, made in PostgreSQL with generate_series.

Everything that knows the shape of `opens` is here (OPEN_COLUMNS, `load_opens`): when the
table changes (partitions, a user-agent lookup table, narrower columns), this is the one
place to adapt.

- subscribers: `n` active ones, `scale{i}@example.org`, tracking allowed;
- campaigns: one a week for a year (`WEEKS`), the newest a week ago;
- opens: split evenly over the campaigns, in time order like a live table (a campaign's
  opens are inserted after the previous one's), each campaign's opens decaying after its
  send (exponential, `DECAY_HOURS` mean: most in the first day, a tail over two weeks);
- user agents: taken from tests/data/user_agents.csv.gz (people's browsers and mail
  clients, scanners and proxies, a few bots), classified by the service's own classifier
  (client, system, machine reason), picked with a skew so that a few dominate as in real
  traffic (Apple's proxy, Gmail's, Outlook) and a long tail stays;
- countries from a short weighted list, addresses as IP_MODE=truncated stores them;
- the narrow row of sql/161: strings into user_agents and open_labels, their ids in opens.
"""

from __future__ import annotations

import csv
import gzip
import random
from pathlib import Path

import asyncpg

from service.tracking.classify import Classifier

ROOT = Path(__file__).resolve().parent.parent
USER_AGENTS_FILE = ROOT / "tests" / "data" / "user_agents.csv.gz"
WEEKS = 52
DECAY_HOURS = 20.0
MAX_DELAY_HOURS = 14 * 24
DISTINCT_USER_AGENTS = 3000
# The head of the distribution: what most opens carry (bench/loadgen.py's mix).
COMMON_USER_AGENTS = (
    "Mozilla/5.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.4266; Pro)",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
)
KINDS = ("mail_client", "person", "security_scanner", "proxy", "headless", "bot")
COUNTRIES = ["DE"] * 6 + ["US"] * 5 + ["FR", "FR", "GB", "GB", "NL", "AT", "CH", "IT", "ES", "SE"]
# The columns the generator fills: keep in step with the opens table.
OPEN_COLUMNS = (
    "subscriber_id",
    "campaign_id",
    "at",
    "addr",
    "user_agent_id",
    "client_id",
    "os_id",
    "country_id",
    "reason_id",
)


def user_agents(count: int = DISTINCT_USER_AGENTS, seed: int = 31) -> list[tuple]:
    """(user_agent, client, os, machine_reason), most common first."""
    with gzip.open(USER_AGENTS_FILE, "rt", encoding="utf-8", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["kind"] in KINDS]
    rng = random.Random(seed)
    rng.shuffle(rows)
    rows.sort(key=lambda r: KINDS.index(r["kind"]))  # clients and people before bots
    strings = list(COMMON_USER_AGENTS)
    strings += [r["user_agent"].strip("'") for r in rows if r["user_agent"]][: count - len(strings)]
    classify = Classifier.from_files().user_agent
    found = []
    for ua in dict.fromkeys(strings):
        kind = classify(ua)
        found.append((kind.text, kind.client, kind.os, kind.machine_reason))
    return found


async def load_subscribers(con: asyncpg.Connection, count: int) -> None:
    await con.execute(
        """INSERT INTO subscribers (email, status, tracking_consent, confirmed_at, created_at)
           SELECT 'scale' || g || '@example.org', 'active', true,
                  now() - interval '2 years', now() - interval '2 years'
           FROM generate_series(1, $1) g""",
        count,
    )


async def load_campaigns(con: asyncpg.Connection, subscribers: int) -> list[int]:
    """WEEKS campaigns, the first a year ago, the last a week ago; their ids, oldest first."""
    return [
        await con.fetchval(
            """INSERT INTO campaigns (name, subject, html, text, created_at, first_sent_at,
                                      recipients, sent)
               VALUES ('week ' || $1, 's', 'h', 't', now() - ($2 || ' weeks')::interval,
                       now() - ($2 || ' weeks')::interval, $3, $3)
               RETURNING id""",
            str(week),
            str(WEEKS - week),
            subscribers,
        )
        for week in range(WEEKS)
    ]


async def load_opens(
    con: asyncpg.Connection, campaign_ids: list[int], subscribers: int, count: int
) -> None:
    """`count` opens, spread evenly over the campaigns, in time order."""
    uas = user_agents()
    await con.execute(
        "CREATE TEMPORARY TABLE bench_ua (n int PRIMARY KEY, user_agent text, client text,"
        " os text, machine_reason text)"
    )
    await con.copy_records_to_table("bench_ua", records=[(i, *row) for i, row in enumerate(uas)])
    # The lookup tables as the recorder fills them (sql/queries/pixel.sql), and their ids.
    await con.execute(
        """INSERT INTO user_agents (agent, last_seen)
           SELECT DISTINCT user_agent, date_trunc('month', now())::date FROM bench_ua
           WHERE user_agent IS NOT NULL ON CONFLICT (agent) DO NOTHING"""
    )
    await con.execute(
        """INSERT INTO open_labels (label)
           SELECT DISTINCT w FROM (SELECT unnest(array[client, os, machine_reason]) AS w
                                   FROM bench_ua UNION ALL SELECT unnest($1::text[])) x
           WHERE w IS NOT NULL ON CONFLICT (label) DO NOTHING""",
        COUNTRIES,
    )
    await con.execute(
        """CREATE TEMPORARY TABLE bench_ua_ids AS
           SELECT b.n, ua.id AS user_agent_id, c.id AS client_id, o.id AS os_id,
                  r.id AS reason_id
           FROM bench_ua b
           LEFT JOIN user_agents ua ON ua.agent = b.user_agent
           LEFT JOIN open_labels c ON c.label = b.client
           LEFT JOIN open_labels o ON o.label = b.os
           LEFT JOIN open_labels r ON r.label = b.machine_reason"""
    )
    await con.execute("ALTER TABLE bench_ua_ids ADD PRIMARY KEY (n)")
    countries = await con.fetchval(
        "SELECT array_agg(l.id ORDER BY c.i) FROM unnest($1::text[]) WITH ORDINALITY c (w, i)"
        " JOIN open_labels l ON l.label = c.w",
        COUNTRIES,
    )
    # Indexes built once after the load, not row by row (several times faster); whatever
    # indexes the table has, as their definitions say.
    indexes = await con.fetch(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'opens'"
        " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
    )
    for index in indexes:
        await con.execute(f'DROP INDEX "{index["indexname"]}"')
    # The months the opens fall in, as the retention passes of a service running for the
    # year would have made them (sql/151); else every row would land in the default
    # partition, which no running service has more than a few rows in.
    await con.execute(
        """SELECT opens_ensure_month(m::date)
           FROM generate_series(
               date_trunc('month', (SELECT min(first_sent_at) FROM campaigns) AT TIME ZONE 'UTC'),
               (SELECT max(first_sent_at) FROM campaigns) AT TIME ZONE 'UTC'
                   + make_interval(hours => $1),
               interval '1 month') AS m""",
        MAX_DELAY_HOURS,
    )
    per = count // len(campaign_ids)
    for index, campaign_id in enumerate(campaign_ids):
        rows = per if index < len(campaign_ids) - 1 else count - per * index
        # k-th open of the campaign: the (k + 0.5)/rows quantile of the decay, so the rows
        # go in in time order; the user agent's index is skewed towards the head (u^6: about a quarter
        # of the opens carry the first, a third the first five, 60 % the first 150).
        await con.execute(
            f"""INSERT INTO opens ({", ".join(OPEN_COLUMNS)})
                SELECT 1 + ((k::bigint * 7919 + $1 * 104729) % $2),
                       $1,
                       c.first_sent_at + make_interval(secs => least(
                           -ln(1 - (k + 0.5) / $3) * $4 * 3600, $5 * 3600)),
                       ('198.51.' || (k % 250) || '.0')::inet,
                       ua.user_agent_id, ua.client_id, ua.os_id,
                       ($6::smallint[])[1 + (k * 31 % array_length($6::smallint[], 1))],
                       ua.reason_id
                FROM (SELECT k, floor($7 * power(random(), 6))::int AS u
                      FROM generate_series(0, $3 - 1) k OFFSET 0) g
                JOIN bench_ua_ids ua ON ua.n = g.u
                CROSS JOIN campaigns c
                WHERE c.id = $1""",
            campaign_id,
            subscribers,
            rows,
            DECAY_HOURS,
            MAX_DELAY_HOURS,
            countries,
            len(uas),
        )
    await con.execute("DROP TABLE bench_ua, bench_ua_ids")
    for index in indexes:
        # ON ONLY (how pg_indexes shows an index of a partitioned table) would build none
        # of the partitions' indexes.
        await con.execute(index["indexdef"].replace(" ON ONLY ", " ON "))


async def bytes_per_open(con: asyncpg.Connection) -> dict[str, int]:
    """Heap and index bytes of every partition of `opens` (the partitioned parent itself
    has none), the number of opens and of distinct user agents among them."""
    row = await con.fetchrow(
        """SELECT sum(pg_relation_size(relid)) AS heap, sum(pg_indexes_size(relid)) AS indexes,
                  (SELECT count(*) FROM opens) AS n,
                  (SELECT count(DISTINCT user_agent_id) FROM opens) AS user_agents
           FROM pg_partition_tree('opens') WHERE isleaf"""
    )
    n = max(row["n"], 1)
    return {
        "bytes": round((row["heap"] + row["indexes"]) / n),
        "heap": round(row["heap"] / n),
        "indexes": round(row["indexes"] / n),
        "user_agents": row["user_agents"],
        "n": row["n"],
    }
