"""The `newsletter` command: dev, serve, worker, migrate, purge, reapply-erasures, bounces."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from service import logs
from service.settings import REQUIRED, Settings, SettingsError

log = logging.getLogger("newsletter.cli")

DEV_DIR = Path(".newsletter")
# Seconds uvicorn gives open connections after SIGTERM; the Kubernetes grace period and
# preStop pause are sized around it (see k8s/).
GRACEFUL_SHUTDOWN_S = 20


def _settings(
    environ: Mapping[str, str] | None = None, required: Sequence[str] = REQUIRED
) -> Settings:
    try:
        return Settings.from_env(environ, required=required)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"newsletter: configuration error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None


_SQLSTATE_HINTS = {
    "28P01": "password authentication failed",
    "28000": "the role may not connect",
    "3D000": "the database does not exist",
    "42P01": "a table is missing (run `newsletter migrate`)",
    "57P03": "the database is starting up or shutting down",
}


def describe_error(exc: BaseException) -> str:
    """One line about a failure that names no data. A database error's message can quote
    the row it refused (`Key (email)=(…) already exists`), so only its class, SQLSTATE and
    a fixed hint are printed; other messages only for failures to reach the server (a
    host and port) and for the service's own migration errors (file names)."""
    from service.db.migrations import MigrationError

    name = exc.__class__.__name__
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate:
        hint = _SQLSTATE_HINTS.get(sqlstate)
        return f"{name} (SQLSTATE {sqlstate})" + (f": {hint}" if hint else "")
    if isinstance(exc, OSError | TimeoutError | MigrationError):
        return f"{name}: {exc}"
    return name


def _run_async(main: Callable[[], object]) -> None:
    try:
        asyncio.run(main())  # type: ignore[arg-type]
    except Exception as exc:  # one line with context instead of a traceback
        print(f"newsletter: {describe_error(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


async def _migrate(settings: Settings) -> list[str]:
    from service.db import connections, migrations

    con = await connections.connect(settings)
    try:
        return await migrations.migrate(con)
    finally:
        await con.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(required=("DATABASE_URL",))
    logs.configure(settings.log_level)

    async def main() -> None:
        applied = await _migrate(settings)
        log.info("migrations done", extra={"count": len(applied)})

    _run_async(main)
    return 0


def _uvicorn(settings: Settings, host: str, port: int, role: str = "all") -> None:
    import uvicorn

    from service.app import create_app
    from service.web.http_protocol import CoalescingHttpToolsProtocol

    uvicorn.run(
        create_app(settings, role),
        host=host,
        port=port,
        http=CoalescingHttpToolsProtocol,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        lifespan="on",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings()
    logs.configure(settings.log_level)
    if not args.no_migrate:
        _run_async(lambda: _migrate(settings))
    _uvicorn(settings, args.host, args.port, "web" if args.no_worker else "all")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """The sending role: the outbox and retention, with /healthz, /readyz and /metrics
    on --port for probes and Prometheus; no public page, so a campaign being sent never
    shares an event loop (or a CPU limit) with the pixel."""
    settings = _settings()
    logs.configure(settings.log_level)
    if settings.outbox_concurrency == 0:
        print("newsletter: a worker needs OUTBOX_CONCURRENCY of at least 1", file=sys.stderr)
        return 2
    _uvicorn(settings, args.host, args.port, "worker")
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dev_secrets(directory: Path) -> dict[str, str]:
    """Generated once and kept, so that links in caught mails keep working."""
    path = directory / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {
        "SECRET_KEYS": secrets.token_urlsafe(48),
        "ADMIN_TOKENS": secrets.token_urlsafe(24),
    }
    path.write_text(json.dumps(values, indent=2))
    path.chmod(0o600)
    return values


def cmd_dev(args: argparse.Namespace) -> int:
    try:
        import aiosmtpd  # noqa: F401
        import pgserver
    except ImportError:
        print(
            "newsletter: `dev` needs the dev extra: pip install -e '.[dev]' (or run `make run`)",
            file=sys.stderr,
        )
        return 2
    from service import devmode

    if devmode.port_in_use(args.port):
        print(
            f"newsletter: port {args.port} is already in use, most likely by a `newsletter dev`"
            f" (make run) that is still running: open http://127.0.0.1:{args.port}/ or stop"
            f" it with Ctrl-C. To run another one: make run PORT={args.port + 1}",
            file=sys.stderr,
        )
        return 1

    DEV_DIR.mkdir(exist_ok=True)
    (DEV_DIR / ".gitignore").write_text("*\n")
    generated = _dev_secrets(DEV_DIR)
    server = pgserver.get_server(DEV_DIR / "pgdata", cleanup_mode="stop")
    public_url = f"http://127.0.0.1:{args.port}"
    environ = dict(os.environ)
    environ.update(
        DATABASE_URL=server.get_uri(),
        SMTP_URL=f"smtp://127.0.0.1:{_free_port()}",
        PUBLIC_URL=public_url,
        SECRET_KEYS=environ.get("SECRET_KEYS") or generated["SECRET_KEYS"],
        ADMIN_TOKENS=environ.get("ADMIN_TOKENS") or generated["ADMIN_TOKENS"],
    )
    environ.setdefault("OUTBOX_POLL_INTERVAL", "1s")
    environ.setdefault("MAIL_FROM", devmode.MAIL_FROM)
    settings = _settings(environ).replace(dev=True, dev_mail_dir=str(DEV_DIR.resolve() / "mail"))
    logs.configure(settings.log_level)
    _run_async(lambda: _migrate(settings))
    print(
        "\n".join(
            (
                "",
                "newsletter dev is running (embedded PostgreSQL, mail catcher; never for production)",
                f"  demo signup page   {public_url}/",
                f"  caught mail        {public_url}/dev/mail  (kept in {DEV_DIR}/mail)",
                f"  admin dashboard    {public_url}/admin",
                f"  admin token        {settings.admin_tokens[0]}  (stored in {DEV_DIR}/secrets.json)",
                f"  data               {DEV_DIR.resolve()}",
                "",
            )
        ),
        flush=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit
    # lets pgserver's exit hook stop the embedded PostgreSQL instead of orphaning it.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        _uvicorn(settings, "127.0.0.1", args.port)
    finally:
        server.cleanup()
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from service.privacy import retention

    settings = _settings(required=("DATABASE_URL",))
    logs.configure(settings.log_level)

    async def main() -> None:
        from service.db import connections

        con = await connections.connect(settings)
        try:
            counts = await retention.purge(con, settings)
        finally:
            await con.close()
        log.info("purge done", extra={"count": sum(counts.values())})
        print(json.dumps(counts))

    _run_async(main)
    return 0


def cmd_reapply_erasures(args: argparse.Namespace) -> int:
    """After a backup restore, before the service takes traffic (docs/concepts/privacy.md,
    "Backups and erasure"): erase again everyone the journal at --journal-url names."""
    settings = _settings(required=("DATABASE_URL",))
    logs.configure(settings.log_level)
    journal_url = args.journal_url or settings.database_url

    async def main() -> None:
        import asyncpg

        from service.db import connections
        from service.privacy import erasure

        target = await connections.connect(settings)
        try:
            source = target if journal_url == settings.database_url else None
            if source is None:
                source = await asyncpg.connect(journal_url, statement_cache_size=0)
            try:
                counts = await erasure.reapply_erasures(source, target)
            finally:
                if source is not target:
                    await source.close()
        finally:
            await target.close()
        log.info("erasures reapplied", extra={"count": counts["erased"]})
        print(json.dumps(counts))

    _run_async(main)
    return 0


def cmd_bounces(args: argparse.Namespace) -> int:
    """The bounce receiver (docs/guides/bounces.md)."""
    settings = _settings(required=("DATABASE_URL", "SECRET_KEYS", "BOUNCE_DOMAIN"))
    if not settings.bounce_domain:
        print("newsletter: configuration error: BOUNCE_DOMAIN is empty", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    from service.bounces import receiver

    _run_async(lambda: receiver.serve(settings, args.host, args.port))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="newsletter", description="Newsletter double opt-in and open-tracking service."
    )
    sub = p.add_subparsers(dest="command", required=True)
    dev = sub.add_parser("dev", help="run everything on embedded defaults (never in production)")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)
    serve = sub.add_parser("serve", help="run the production server")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--no-migrate", action="store_true", help="skip migrations at start")
    serve.add_argument(
        "--no-worker",
        action="store_true",
        help="serve pages and the pixel only: `newsletter worker` sends the outbox",
    )
    serve.set_defaults(func=cmd_serve)
    worker = sub.add_parser(
        "worker", help="send the outbox and run retention (health and metrics on --port)"
    )
    worker.add_argument("--host", default="0.0.0.0")
    worker.add_argument("--port", type=int, default=8001)
    worker.set_defaults(func=cmd_worker)
    sub.add_parser("migrate", help="apply pending migrations and exit").set_defaults(
        func=cmd_migrate
    )
    sub.add_parser("purge", help="run the retention pass and exit").set_defaults(func=cmd_purge)
    reapply = sub.add_parser(
        "reapply-erasures",
        help="after a backup restore: erase again everyone in the erasure journal",
    )
    reapply.add_argument(
        "--journal-url",
        default="",
        help="the database to read the journal from (default: DATABASE_URL)",
    )
    reapply.set_defaults(func=cmd_reapply_erasures)
    bounces = sub.add_parser(
        "bounces", help="run the SMTP server that receives bounces for BOUNCE_DOMAIN"
    )
    bounces.add_argument("--host", default=None, help="default: BOUNCE_SMTP_HOST (0.0.0.0)")
    bounces.add_argument("--port", type=int, default=None, help="default: BOUNCE_SMTP_PORT (2525)")
    bounces.set_defaults(func=cmd_bounces)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)
