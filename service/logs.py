"""One JSON object per line on stdout.

Log calls pass only non-personal fields through `extra=`; this formatter writes the
message as `event` and a fixed allow-list of extra fields, so an email address, IP,
user agent or token that slipped into some library's `extra` never reaches the output.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

# Fields a log call may add. Nothing personal belongs on this list.
ALLOWED_FIELDS = (
    "route",
    "method",
    "status",
    "duration_ms",
    "file",
    "count",
    "kind",
    "job_id",
    "campaign_id",
    "subscriber_id",
    "attempts",
    "smtp_code",
    "error",
    "sqlstate",
    "reason",
    "url",
    "task",
    "dropped",
    "delay_s",
    "source",  # bounces: the intake (dsn, ses, ...)
    "outcome",  # bounces: erased, counted, ...
)


# Libraries whose messages carry what a peer sent or who the peer is: aiosmtpd
# ("mail.log") writes the peer's address and the commands it sent, aioimaplib the lines
# it exchanges (the mailbox's user name, message contents). Only their warnings and
# errors pass, and only as a fixed text: the logger and the level.
SCRUBBED = ("mail.log", "aioimaplib")


class ScrubLibraries(logging.Filter):
    """Replaces the message of a SCRUBBED library's record by `<logger> <level>`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name in SCRUBBED or record.name.startswith(tuple(n + "." for n in SCRUBBED)):
            record.msg = f"{record.name} {record.levelname.lower()}"
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for field in ALLOWED_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                entry[field] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception class only: messages of database and SMTP errors can quote
            # the values (an address) that caused them.
            entry["exception"] = record.exc_info[0].__name__
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "info", stream: Any = None) -> None:
    """Route the service's and uvicorn's loggers to one JSON handler."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ScrubLibraries())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Libraries may quote request URLs or SQL values in their messages: only their
    # warnings and errors are wanted, and those are rare.
    for name in ("httpx", "httpcore", "asyncpg", "aiosmtplib", "multipart", *SCRUBBED):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's access log writes the client IP and the raw path (which holds tokens);
    # the service writes its own access lines with the route template instead.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True
