"""/v1/docs: swagger-ui from the package's bundle, served by the API listener, nothing from elsewhere."""

from __future__ import annotations

import asyncio
import os
import re

import aiohttp
import pytest

from tests.support.api import api_client
from tests.support.daemon import running_daemon
from tests.test_unsubscribe_e2e import CHROMIUM


async def test_the_docs_page_and_its_files_come_from_this_listener_only(tmp_path):
    async with running_daemon(tmp_path) as d:
        base = f"http://{d.address('api')}"
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/v1/docs", allow_redirects=False) as resp:
                assert resp.status == 308 and resp.headers["Location"] == "docs/"
            async with session.get(base + "/v1/docs/") as resp:     # no key: public, as the document is
                assert resp.status == 200 and resp.content_type == "text/html"
                page = await resp.text()
                csp = resp.headers["Content-Security-Policy"]
                tag = resp.headers["ETag"]
            async with session.get(base + "/v1/docs/", headers={"If-None-Match": tag}) as resp:
                assert resp.status == 304
            directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
            assert directives["default-src"] == "'none'" and directives["script-src"] == "'self'"
            assert directives["connect-src"] == "'self'" and "http" not in csp
            links = re.findall(r'(?:src|href)="([^"]*)"', page)
            assert links and all("//" not in link and not link.startswith("/") for link in links), links
            assert "<script>" not in page          # no inline script: script-src 'self' holds
            for link in links:
                async with session.get(base + "/v1/docs/" + link) as resp:
                    assert resp.status == 200, link
                    body = await resp.read()
                    assert len(body) > 50 and resp.headers["X-Content-Type-Options"] == "nosniff"
                    if link.endswith(".js"):
                        assert resp.content_type == "text/javascript"
            async with session.get(base + "/v1/docs/docs.js") as resp:
                initializer = await resp.text()
            assert '"../openapi.json"' in initializer and "validatorUrl: null" in initializer
            assert "http" not in initializer
            for probe in ("/v1/docs/index.html", "/v1/docs/..%2f..%2fetc%2fpasswd", "/v1/docs/swagger-ui.js.map"):
                async with session.get(base + probe) as resp:
                    assert resp.status == 404, probe


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup --test (TEST_APT_PACKAGES)")
async def test_the_docs_page_renders_every_operation_in_a_headless_browser(tmp_path):
    async with running_daemon(tmp_path) as d:
        routes = next(c for c in d.daemon.components if c.name == "api").routes
        async with api_client(d) as api:
            assert (await api.get("/v1/openapi.json"))[0] == 200
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium'}",
            "--window-size=1280,2000", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000", "--dump-dom",
            f"http://{d.address('api')}/v1/docs/", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "HOME": str(tmp_path)})
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        dom = out.decode()
        violations = [line for line in err.decode(errors="replace").splitlines() if "Content Security Policy" in line]
        assert not violations, violations[:3]      # the page needs nothing its CSP refuses (no inline style or script)
        assert "gateway tenant API" in dom
        assert "opblock-summary" in dom, dom[-3000:]       # swagger-ui rendered the operations
        for route in routes:
            assert route.summary.replace("'", "&#39;") in dom or route.summary in dom, route.summary
