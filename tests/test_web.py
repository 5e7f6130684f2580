"""/health and /metrics over real HTTP (aiohttp client against the daemon's web server)."""

from __future__ import annotations

import re

import aiohttp
import pytest

from tests.support.daemon import WEB_PROCESS, running_daemon

# Prometheus text exposition: '# HELP', '# TYPE', or 'name{labels} value'.
SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})? [-+0-9.eEinfNa]+$')


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_health_is_200_while_everything_is_up_and_503_when_the_store_cannot_write(tmp_path, web):
    async with running_daemon(tmp_path, web) as d, aiohttp.ClientSession() as http:
        url = f"http://{d.address('web')}/health"
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.json() == {"ok": True, "problems": [], "store_writable": True, "listeners_down": []}
        # The writer stops (as it would after a fatal disk error): nothing can be made durable.
        await d.store.db.close()
        async with http.get(url) as resp:
            assert resp.status == 503
            assert await resp.json() == {"ok": False, "problems": ["store: the writer is not running"],
                                         "store_writable": False, "listeners_down": []}


async def test_health_is_503_when_a_listener_is_down(tmp_path):
    async with running_daemon(tmp_path) as d, aiohttp.ClientSession() as http:
        admin = next(c for c in d.daemon.components if c.name == "admin")
        await admin.stop(0)
        async with http.get(f"http://{d.address('web')}/health") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["listeners_down"] == ["admin"] and body["problems"] == ["admin: listener is down"]


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_metrics_in_prometheus_text_format(tmp_path, web):
    async with running_daemon(tmp_path, web) as d, aiohttp.ClientSession() as http:
        await d.call("tenant.add", name="m")
        await d.call("ping")
        async with http.get(f"http://{d.address('web')}/health") as resp:
            assert resp.status == 200
        async with http.get(f"http://{d.address('web')}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=")
            text = await resp.text()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        assert SAMPLE.match(line), line
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    names = {re.sub(r"\{.*", "", k) for k in samples}
    assert all(n.startswith("gateway_") or n.startswith(("python_", "process_")) for n in names), names
    assert samples["gateway_store_writer_up"] == 1
    assert samples["gateway_store_commits_total"] >= 1
    assert samples["gateway_store_writes_total"] >= samples["gateway_store_commits_total"]
    assert samples['gateway_admin_requests_total{method="tenant.add",outcome="ok"}'] == 1
    assert samples['gateway_admin_requests_total{method="ping",outcome="ok"}'] == 1
    assert samples['gateway_http_requests_total{path="/health",status="200"}'] == 1
    assert samples["gateway_start_time_seconds"] > 1.6e9
    # Conventional units: counters end in _total; time in _seconds; sizes in _bytes.
    counters = [line.split()[2].removesuffix("_total") for line in text.splitlines()
                if line.startswith("# TYPE gateway_") and line.endswith(" counter")]
    assert counters
    for family in counters:
        for name in names:
            if name.startswith(family + "_") or name == family:
                assert name in (f"{family}_total", f"{family}_created"), name
    for name in names:
        assert not re.search(r"_(ms|milliseconds|kb|mb|minutes)(_|$)", name), name


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_unknown_path_is_404(tmp_path, web):
    async with running_daemon(tmp_path, web) as d, aiohttp.ClientSession() as http:
        async with http.get(f"http://{d.address('web')}/nope") as resp:
            assert resp.status == 404
