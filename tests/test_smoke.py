from tests.support.daemon import AdminError, running_daemon


async def test_daemon_serves_status_and_tenants(tmp_path):
    async with running_daemon(tmp_path) as d:
        status = await d.call("status")
        assert status["listeners"][0]["name"] == "web"
        assert (await d.call("tenant.add", name="acme"))["name"] == "acme"
        assert [t["name"] for t in await d.call("tenant.list")] == ["acme"]
        try:
            await d.call("tenant.add", name="acme")
        except AdminError as exc:
            assert exc.code == "conflict"
        else:
            raise AssertionError("duplicate tenant accepted")
