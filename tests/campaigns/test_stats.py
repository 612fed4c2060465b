import asyncio

from tests.pixel_support import CHROME, pixel_path, seed

SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)


async def test_stats_answer_from_aggregates_and_survive_erasure(
    app_factory, db, admin_headers
) -> None:
    campaign_id, subscribers = await seed(db, 4)
    # Every bucket shown, however small (the threshold has tests of its own).
    async with app_factory(stats_min_bucket=1) as (_app, client):
        await client.get(pixel_path(subscribers[0], campaign_id), headers={"User-Agent": CHROME})
        await client.get(pixel_path(subscribers[0], campaign_id), headers={"User-Agent": CHROME})
        await client.get(
            pixel_path(subscribers[1], campaign_id), headers={"User-Agent": SAFARI_IOS}
        )
        await client.get(
            pixel_path(subscribers[2], campaign_id), headers={"User-Agent": "Mozilla/5.0"}
        )
        before = (
            await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
        ).json()
        await db.execute("DELETE FROM subscribers WHERE id = ANY($1::bigint[])", subscribers[:3])
        after = (
            await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
        ).json()
    assert before == after
    assert (before["recipients"], before["sent"]) == (4, 4)
    # Apple's prefetch (subscribers[2]) is an open, but nobody's unique open (issue 27).
    assert (before["opens"], before["unique_opens"]) == (4, 2)
    assert (before["machine_opens"], before["human_opens"]) == (1, 3)
    assert before["machine_reasons"] == {"apple_mpp": 1}
    assert before["unique_open_rate"] == 0.5
    assert [h["hour"] for h in before["by_hour"]] == [1]
    clients = {c["client"]: c["opens"] for c in before["by_client"]}
    assert clients == {"Chrome": 2, "Apple Mail": 1, "unknown": 1}
    assert sum(c["opens"] for c in before["by_country"]) == 4
    assert (before["personal_opens"], before["anonymous_opens"]) == (4, 0)


async def test_stats_of_a_campaign_without_opens_are_zero(client, db, admin_headers) -> None:
    campaign_id, _ = await seed(db, 2)
    body = (
        await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
    ).json()
    assert (body["opens"], body["unique_opens"], body["by_hour"], body["by_client"]) == (
        0,
        0,
        [],
        [],
    )


async def test_stats_need_the_admin_token(client, db) -> None:
    campaign_id, _ = await seed(db, 1)
    assert (await client.get(f"/admin/api/campaigns/{campaign_id}/stats")).status_code == 401
    bad = {"Authorization": "Bearer wrong-token-wrong-token"}
    response = await client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=bad)
    assert response.status_code == 401


async def test_unknown_malformed_and_huge_campaign_ids_are_404(client, admin_headers) -> None:
    for cid in ("999999", "0", "99999999999999999999999", "abc", "-1"):
        response = await client.get(f"/admin/api/campaigns/{cid}/stats", headers=admin_headers)
        assert response.status_code == 404, cid


async def test_concurrent_stats_requests_agree(client, db, admin_headers) -> None:
    campaign_id, _ = await seed(db, 1)
    responses = await asyncio.gather(
        *(
            client.get(f"/admin/api/campaigns/{campaign_id}/stats", headers=admin_headers)
            for _ in range(20)
        )
    )
    assert len({r.text for r in responses}) == 1 and responses[0].status_code == 200
