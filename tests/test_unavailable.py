"""Every endpoint that needs the database answers 503 with Retry-After while it is gone."""

from urllib.parse import urlsplit

import asyncpg

from tests import support


async def cut_off(database_url: str, keep_pid: int) -> asyncpg.Connection:
    """Refuses new connections to the test database and drops the open ones."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(support.with_database(database_url, "postgres"))
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid NOT IN (pg_backend_pid(), $2)",
        name,
        keep_pid,
    )
    return admin


async def restore(admin: asyncpg.Connection, database_url: str) -> None:
    name = urlsplit(database_url).path.lstrip("/")
    await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    await admin.close()


async def test_pages_and_admin_api_answer_503_not_500_while_the_database_is_gone(
    app_factory, db, database_url, admin_headers
) -> None:
    async with app_factory() as (app, client):
        unsubscribe = app.state.tokens.unsubscribe(1)
        admin = await cut_off(database_url, db.get_server_pid())
        try:
            page = await client.post(
                f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"}
            )
            api = await client.get("/admin/api/campaigns", headers=admin_headers)
            pixel = await client.get(f"/o/{app.state.tokens.pixel(1, 1)}.gif")
        finally:
            await restore(admin, database_url)
    assert page.status_code == 503, page.text
    assert page.headers["retry-after"] and "text/html" in page.headers["content-type"]
    assert api.status_code == 503 and api.json() == {"error": "unavailable"}
    assert api.headers["retry-after"]
    assert pixel.status_code == 200  # the pixel never breaks an email
