"""Every endpoint that needs the database answers 503 with Retry-After while it is gone."""

from service.db.connections import RETRY_AFTER
from tests.signup_helpers import subscribe
from tests.support import cut_off, restore


async def test_pages_and_admin_api_answer_503_not_500_while_the_database_is_gone(
    app_factory, db, database_url, admin_headers
) -> None:
    postmark = ("hook-user", "a-long-webhook-password")
    async with app_factory(webhook_postmark_auth=":".join(postmark)) as (app, client):
        unsubscribe = app.state.tokens.unsubscribe(1)
        admin = await cut_off(database_url, db.get_server_pid())
        try:
            page = await client.post(
                f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"}
            )
            api = await client.get("/admin/api/campaigns", headers=admin_headers)
            pixel = await client.get(f"/o/{app.state.tokens.pixel(1, 1)}.gif")
            signup = await subscribe(client, "later@example.com")
            confirm = await client.get(f"/confirm/{app.state.tokens.confirm(1)}")
            confirm_post = await client.post(f"/confirm/{app.state.tokens.confirm(1)}", data={})
            cancel = await client.get(f"/cancel/{app.state.tokens.cancel(1)}")
            bounce = {"RecordType": "Bounce", "Type": "HardBounce", "Email": "a@example.org"}
            webhook = await client.post("/webhooks/postmark", json=bounce, auth=postmark)
        finally:
            await restore(admin, database_url)
    assert page.status_code == 503, page.text
    assert page.headers["retry-after"] and "text/html" in page.headers["content-type"]
    assert api.status_code == 503 and api.json() == {"error": "unavailable"}
    assert api.headers["retry-after"]
    assert pixel.status_code == 200  # the pixel never breaks an email
    # One Retry-After for every 503, whichever module answered it.
    answers = (page, api, signup, confirm, confirm_post, cancel, webhook)
    assert [a.status_code for a in answers] == [503] * len(answers)
    assert {a.headers["retry-after"] for a in answers} == {RETRY_AFTER}
    # A 503 page is never cached by a proxy in front of the service.
    assert {a.headers["cache-control"] for a in answers} == {"no-store"}


async def test_healthz_answers_while_the_database_is_gone_and_readyz_does_not(
    app_factory, db, database_url
) -> None:
    """Liveness must not depend on the database (a restart would not bring it back), so
    /healthz is asked while the app's connections are cut off, not only with them up."""
    async with app_factory() as (_app, client):
        admin = await cut_off(database_url, db.get_server_pid())
        try:
            health = await client.get("/healthz")
            ready = await client.get("/readyz")
        finally:
            await restore(admin, database_url)
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
