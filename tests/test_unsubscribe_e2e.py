"""One-click unsubscribe end to end: mail submitted over SMTP arrives at the remote with List-Unsubscribe
and List-Unsubscribe-Post under a DKIM signature that dkimpy verifies; a real HTTP client (aiohttp)
POSTs the link as a mailbox provider does; the page works in a real headless browser (Chromium).

The suppression and the events are read back from the store; operators act through the admin socket.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import shutil
import struct
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import dkim
import pytest

from gateway.unsubscribe import tokens
from tests.support import process
from tests.support.daemon import WEB_PROCESS, merge
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, publish_mx, wait_events
from tests.support.sink import mail_sink
from tests.test_outbound_e2e import raw_message, submit

PUBLIC = "https://mail.acme.example"
DISPLAY = "Acme Garden Supplies"
CONFIG = {"web": {"public_url": PUBLIC}}
WITH_MAILTO = {**CONFIG, "unsubscribe": {"mailto": True}}


def fields_of(data: bytes) -> dict[str, list[str]]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return {name: [" ".join(v.split()) for v in msg.get_all(name, [])] for name in ("List-Unsubscribe", "List-Unsubscribe-Post")}


def signed_names(data: bytes) -> list[str]:
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    sig = "".join(str(msg["DKIM-Signature"]).split())
    return re.search(r"(?:^|;)h=([^;]+)", sig).group(1).split(":")


def token_of(data: bytes) -> str:
    [value] = fields_of(data)["List-Unsubscribe"]
    url = re.match(r"<([^>]+)>", value).group(1)
    assert url.startswith(PUBLIC + "/u/"), url
    return urlsplit(url).path.rsplit("/", 1)[1]


def local_url(d, token: str) -> str:
    host, port = d.hostport("web")
    return f"http://{host}:{port}/u/{token}"


async def marketing_mail(d, setup, sink, rcpts: list[str], headers: str = "") -> dict[str, bytes]:
    """Submit one message over SMTP to ``rcpts``; {rcpt: what the remote received}."""
    before = len(sink.messages)
    qid = await submit(d, setup, rcpts, raw_message(setup["sender"], rcpts, headers=headers))
    got = (await sink.wait_for(before + len(rcpts)))[before:]
    await wait_events(d, qid, "delivered", len(rcpts))
    return {m.rcpt_tos[0]: m.data for m in got}


async def suppressed(d, setup, address: str) -> dict | None:
    tenant = await d.store.tenants.get(setup["tenant"])
    return await d.store.suppressions.find(tenant["id"], address, [("usecase", setup["usecase_id"])])


async def events_of(d, kind: str) -> list[dict]:
    return await d.store.events.list(kind=kind)


# --------------------------------------------------------------------------- headers on the wire


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_each_recipient_gets_its_own_signed_one_click_fields_and_the_post_unsubscribes(tmp_path, dns_server, web):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, merge(WITH_MAILTO, web), kind="marketing", usecase="news", dkim="both") as (d, setup):
            # The app's own List-Unsubscribe is replaced: RFC 8058 wants exactly one https URI.
            got = await marketing_mail(d, setup, sink, ["bob@dest.test", "carol@dest.test"],
                                       headers="List-Unsubscribe: <mailto:app@acme.test>\r\n")
            links = {}
            for rcpt, data in got.items():
                f = fields_of(data)
                assert f["List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]
                [value] = f["List-Unsubscribe"]
                token = links[rcpt] = token_of(data)
                assert value == (f"<{PUBLIC}/u/{token}>, "
                                 f"<mailto:unsubscribe@{setup['return_path_domain']}?subject=unsubscribe%20{token}>")
                # Signed, and oversigned (listed once more than present): nobody can add another after us.
                names = signed_names(data)
                assert names.count("list-unsubscribe") == 2 and names.count("list-unsubscribe-post") == 2
                for i in range(2):  # RSA and Ed25519
                    assert dkim.DKIM(data).verify(idx=i, dnsfunc=dkim_dnsfunc(dns_server)), (rcpt, i)
                # A second List-Unsubscribe added in transit breaks the signature.
                tampered = b"List-Unsubscribe: <https://evil.example/x>\r\n" + data
                assert not dkim.DKIM(tampered).verify(dnsfunc=dkim_dnsfunc(dns_server))
            assert links["bob@dest.test"] != links["carol@dest.test"]

            # A mailbox provider's one-click: POST, the RFC 8058 body, no cookies, no login.
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                for attempt in range(2):  # idempotent: 200 both times, one suppression, one event
                    async with http.post(local_url(d, links["bob@dest.test"]), data={"List-Unsubscribe": "One-Click"}) as r:
                        assert r.status == 200, await r.text()
                        assert "Set-Cookie" not in r.headers and r.headers["Cache-Control"] == "no-store"
            entry = await suppressed(d, setup, "bob@dest.test")
            assert entry is not None and entry["reason"] == "unsubscribe" and entry["source"] == "one-click"
            assert await suppressed(d, setup, "carol@dest.test") is None
            [event] = await events_of(d, "unsubscribed")
            assert event["subject"] == "bob@dest.test" and event["data"]["source"] == "one-click"
            assert event["data"]["scope"] == "usecase" and event["data"]["scope_id"] == setup["usecase_id"]
            assert len(await events_of(d, "suppression_added")) == 1


async def test_transactional_mail_has_no_fields_unless_its_use_case_asks(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, CONFIG) as (d, setup):
            [data] = (await marketing_mail(d, setup, sink, ["bob@dest.test"])).values()
            assert fields_of(data) == {"List-Unsubscribe": [], "List-Unsubscribe-Post": []}
            # Oversigned even when absent: a List-Unsubscribe added later does not verify.
            assert signed_names(data).count("list-unsubscribe") == 1
            assert dkim.DKIM(data).verify(dnsfunc=dkim_dnsfunc(dns_server))
            out = await asyncio.to_thread(process.run_cli, "--socket", str(d.daemon.paths.socket), "usecase", "update",
                                          "acme", setup["usecase"], "--list-unsubscribe", "on")
            assert re.search(r"^list_unsubscribe +on$", out.stdout, re.M), out.stdout
            shown = await d.call("usecase.show", tenant="acme", name=setup["usecase"])
            assert shown["list_unsubscribe"] == "on"
            d.daemon.scheduler.routes.clear()  # routes are cached ROUTE_TTL seconds
            [data] = (await marketing_mail(d, setup, sink, ["carol@dest.test"])).values()
            assert fields_of(data)["List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]
            assert dkim.DKIM(data).verify(dnsfunc=dkim_dnsfunc(dns_server))


# --------------------------------------------------------------------------- the web endpoints


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_tampered_or_unknown_tokens_get_400_and_change_nothing_and_resubscribe_works(tmp_path, dns_server, web):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, merge(CONFIG, web), kind="marketing", usecase="news") as (d, setup):
            [data] = (await marketing_mail(d, setup, sink, ["bob@dest.test"])).values()
            token = token_of(data)
            before = len(await d.store.events.list(limit=10000))
            flipped = token[:-3] + ("A" if token[-3] != "A" else "B") + token[-2:]
            async with aiohttp.ClientSession() as http:
                for bad in (flipped, token[:-1], token + "AA", "x" * 40, "%00", "a" * 2000):
                    async with http.post(local_url(d, bad), data={"List-Unsubscribe": "One-Click"}) as r:
                        assert r.status == 400, (bad, r.status)
                    async with http.get(local_url(d, bad)) as r:
                        assert r.status == 400 and "not valid" in await r.text()
                # A GET never unsubscribes (link scanners fetch every URL); a POST asking for nothing known is refused.
                async with http.get(local_url(d, token)) as r:
                    assert r.status == 200 and "Unsubscribe?" in await r.text()
                async with http.post(local_url(d, token), data={"something": "else"}) as r:
                    assert r.status == 400
                # Signed by us but naming a use case the tenant does not own (another tenant's, or an id
                # SQLite reused after a delete): nothing is written anywhere.
                unsubscriber = next(c for c in d.daemon.components if c.name == "unsubscribe")
                key_id, secret = await unsubscriber.keyring.signing()
                tenant_id = (await d.store.tenants.get("acme"))["id"]
                for t_id, scope_id in ((tenant_id, setup["usecase_id"] + 1), (tenant_id + 1, setup["usecase_id"])):
                    foreign = tokens.mint(tokens.Claim(key_id, t_id, "usecase", scope_id, scope_id, 0, "bob@dest.test"), secret)
                    async with http.post(local_url(d, foreign), data={"List-Unsubscribe": "One-Click"}) as r:
                        assert r.status == 400
                    async with http.get(local_url(d, foreign)) as r:
                        assert r.status == 400
                assert await suppressed(d, setup, "bob@dest.test") is None
                assert len(await d.store.events.list(limit=10000)) == before

                # The page's buttons: unsubscribe, then subscribe again (both POSTs to the same signed link).
                async with http.post(local_url(d, token), data={"action": "unsubscribe"}) as r:
                    page = await r.text()
                    assert r.status == 200 and "You are unsubscribed" in page and 'value="resubscribe"' in page
                assert (await suppressed(d, setup, "bob@dest.test"))["source"] == "page"
                async with http.post(local_url(d, token), data={"action": "resubscribe"}) as r:
                    assert r.status == 200 and "You are subscribed again" in await r.text()
                assert await suppressed(d, setup, "bob@dest.test") is None
                [event] = await events_of(d, "resubscribed")
                assert event["subject"] == "bob@dest.test" and event["data"]["source"] == "page"

                # Key rotation: old links keep working; once their key is retired they get 400.
                old_key = (await d.call("unsubscribe.keys"))[0]["id"]
                new = await d.call("unsubscribe.rotate_key")
                assert new["state"] == "signing" and new["id"] != old_key
                async with http.post(local_url(d, token), data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200
                retired = await d.call("unsubscribe.retire_key", key_id=old_key)
                assert retired["state"] == "retired"
                async with http.post(local_url(d, token), data={"action": "resubscribe"}) as r:
                    assert r.status == 400
                assert (await suppressed(d, setup, "bob@dest.test"))["source"] == "one-click"
                keys_out = await asyncio.to_thread(process.run_cli, "--socket", str(d.daemon.paths.socket), "unsubscribe", "keys")
                assert "retired" in keys_out.stdout and "signing" in keys_out.stdout
                assert all("secret" not in k for k in await d.call("unsubscribe.keys"))


@pytest.mark.parametrize("web", WEB_PROCESS)
async def test_domain_scope_suppresses_for_the_sending_domain(tmp_path, dns_server, web):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, merge(CONFIG, web), kind="marketing", usecase="news") as (d, setup):
            await d.call("usecase.update", tenant="acme", name="news", unsubscribe_scope="domain")
            d.daemon.scheduler.routes.clear()
            [data] = (await marketing_mail(d, setup, sink, ["dora@dest.test"])).values()
            assert "mailto:" in fields_of(data)["List-Unsubscribe"][0]   # on by default: the inbound MX takes it
            async with aiohttp.ClientSession() as http:
                async with http.post(local_url(d, token_of(data)), data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200
            tenant = await d.store.tenants.get("acme")
            domain_id = (await d.call("usecase.show", tenant="acme", name="news"))["domain_id"]
            entry = await d.store.suppressions.find(tenant["id"], "dora@dest.test", [("domain", domain_id)])
            assert entry is not None and entry["reason"] == "unsubscribe"
            assert await suppressed(d, setup, "dora@dest.test") is None  # not at use-case scope


async def test_mailto_request_applies_through_the_same_path(tmp_path, dns_server):
    from gateway.unsubscribe import mailto

    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, WITH_MAILTO, kind="marketing", usecase="news") as (d, setup):
            [data] = (await marketing_mail(d, setup, sink, ["erin@dest.test"])).values()
            uri = re.search(r"<(mailto:[^>]+)>", fields_of(data)["List-Unsubscribe"][0]).group(1)
            to, _, query = uri[len("mailto:"):].partition("?")
            subject = query.removeprefix("subject=").replace("%20", " ")
            assert mailto.is_request_address(to, [setup["return_path_domain"]])
            unsubscriber = next(c for c in d.daemon.components if c.name == "unsubscribe")
            claim = await unsubscriber.keyring.verify(mailto.token_in("Re: " + subject, to))
            assert await unsubscriber.apply(claim, "mailto") is True
            assert await unsubscriber.apply(claim, "mailto") is False  # again: nothing more
            assert (await suppressed(d, setup, "erin@dest.test"))["source"] == "mailto"


# --------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the decoded rows): a blank page has very few."""
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", raw[16:24])
    pos, idat = 8, b""
    while pos < len(raw):
        length, kind = struct.unpack(">I4s", raw[pos:pos + 8])
        if kind == b"IDAT":
            idat += raw[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, len(set(zlib.decompress(idat)))


async def chromium(tmp_path: Path, url: str, *args: str) -> str:
    profile = tmp_path / f"chromium-{len(list(tmp_path.glob('chromium-*')))}"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--window-size=390,844", "--hide-scrollbars", *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "HOME": str(tmp_path)})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is installed by scripts/setup --test (TEST_APT_PACKAGES)")
async def test_the_page_in_a_headless_browser_on_a_phone(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, CONFIG, kind="marketing", usecase="news") as (d, setup):
            await d.call("tenant.update", name="acme", display_name=DISPLAY)
            [data] = (await marketing_mail(d, setup, sink, ["bob@dest.test"])).values()
            url = local_url(d, token_of(data))
            dom = await chromium(tmp_path, url, "--dump-dom")
            assert DISPLAY.upper() not in dom and DISPLAY in dom  # the tenant's display name, as text
            assert "Unsubscribe?" in dom and "bob@dest.test" in dom and 'value="unsubscribe"' in dom
            shot = tmp_path / "page.png"
            await chromium(tmp_path, url, f"--screenshot={shot}")
            width, height, distinct = png_facts(shot)
            assert (width, height) == (390, 844) and distinct > 20
            assert await suppressed(d, setup, "bob@dest.test") is None  # the browser's GETs changed nothing
            tesseract = shutil.which("tesseract")
            if tesseract:
                proc = await asyncio.create_subprocess_exec(tesseract, str(shot), "stdout", stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.DEVNULL)
                text = " ".join((await proc.communicate())[0].decode().split()).replace(" @", "@")
                assert "Unsubscribe" in text and "bob@dest.test" in text, text
                assert "GARDEN" in text.upper(), text
            # Once unsubscribed, the same link shows the state and the re-subscribe button.
            async with aiohttp.ClientSession() as http:
                async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as r:
                    assert r.status == 200
            dom = await chromium(tmp_path, url, "--dump-dom")
            assert "You are unsubscribed" in dom and 'value="resubscribe"' in dom and "Subscribe again" in dom
            keep = os.environ.get("UNSUBSCRIBE_SCREENSHOT")
            if keep:
                shutil.copy(shot, keep)
