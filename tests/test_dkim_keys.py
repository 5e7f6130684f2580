"""DKIM private keys in the store: a key made on one node signs on another with no file; rotation;
the one-time import of a key from before the store held them; a key with neither (health, held mail)."""

from __future__ import annotations

import asyncio
import os
import shutil

import dkim
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from gateway.cli import main
from gateway.domains.keyimport import KeyImport, missing_key, read_key_file
from tests.support.daemon import merge, running_daemon
from tests.support.delivery import FAST_RETRIES, delivering_daemon, dkim_dnsfunc, enqueue, publish_mx, recipients, wait_events
from tests.support.dns import dns_overrides
from tests.support.sink import mail_sink
from tests.support.tenancy import publish_records


def signers(data: bytes) -> list[str]:
    """The s= of each DKIM-Signature, top down."""
    return [dkim.util.parse_tag_value(v)[b"s"].decode() for k, v in dkim.DKIM(data).headers if k.lower() == b"dkim-signature"]


def all_verify(data: bytes, dnsfunc) -> bool:
    return all(dkim.DKIM(data).verify(idx=i, dnsfunc=dnsfunc) for i in range(len(signers(data))))


def importer(d) -> KeyImport:
    return next(c for c in d.daemon.components if isinstance(c, KeyImport))


async def as_before_0033(d, key_path: str) -> dict:
    """Make the active key a row from before the store held private keys: no PEM, a file named."""
    def run(conn):
        row = dict(conn.execute("SELECT id, selector, private_pem FROM dkim_keys WHERE state = 'active'").fetchone())
        conn.execute("UPDATE dkim_keys SET private_pem = NULL, key_path = ? WHERE id = ?", (key_path, row["id"]))
        return row
    return await d.store.db.write(run)


async def test_a_key_made_on_one_node_signs_on_another_with_no_file_and_rotates_there(tmp_path, dns_server):
    """Node A adds the domain (rsa + ed25519) and stops; node B gets only the database (what a shared
    store gives it), not A's state directory: its mail carries both signatures, which dkimpy verifies
    against the published records. A rotation on B then signs with the new selector only."""
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path / "a", dns_server, sink.port, dkim="both") as (a, setup):
            state_a = a.daemon.paths.state_dir
        assert not (state_a / "keys").exists()            # no key file was written
        state_b = tmp_path / "b" / "state"
        state_b.mkdir(parents=True)
        for name in ("gateway.db", "gateway.db-wal", "gateway.db-shm"):
            if (state_a / name).exists():
                shutil.move(state_a / name, state_b / name)
        shutil.rmtree(state_a)
        overrides = merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port}})
        async with running_daemon(tmp_path / "b", overrides) as b:
            await enqueue(b, setup, ["bob@dest.test"])
            (first,) = await sink.wait_for(1)
            assert sorted(signers(first.data)) == sorted(setup["selectors"]) and len(setup["selectors"]) == 2
            assert all_verify(first.data, dkim_dnsfunc(dns_server))

            rotated = await b.call("domain.rotate_dkim", domain=setup["domain"], dkim="rsa", selector="next")
            assert {k["selector"]: k["state"] for k in rotated["keys"]}["next"] == "pending"
            await publish_records(b, dns_server, setup["domain"])
            assert (await b.call("domain.verify", domain=setup["domain"]))["activated_selectors"] == ["next"]
            await b.daemon.scheduler.reload(b.daemon.config)   # the route cache, as its TTL would
            await enqueue(b, setup, ["carol@dest.test"])
            second = (await sink.wait_for(2))[1]
            assert "next" in signers(second.data) and setup["selectors"][0] not in signers(second.data)
            assert all_verify(second.data, dkim_dnsfunc(dns_server))
            assert not (state_b / "keys").exists()


async def test_a_key_file_from_before_the_store_held_keys_is_imported_at_start(tmp_path, dns_server):
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="rsa") as (d, setup):
            path = d.daemon.paths.state_dir / "keys" / setup["domain"] / f"{setup['selectors'][0]}.rsa.0a1b2c.pem"
            row = await as_before_0033(d, str(path))
            path.parent.mkdir(parents=True, mode=0o700)
            path.write_text(row["private_pem"])
        overrides = merge(dns_overrides(dns_server), {"delivery": {**FAST_RETRIES, "remote_port": sink.port}})
        async with running_daemon(tmp_path, overrides) as d:
            assert (await d.call("status"))["dkim_keys"] == {"imported": 1, "missing": []}
            stored = await d.store.db.read(lambda c: c.execute("SELECT private_pem FROM dkim_keys WHERE id = ?",
                                                               (row["id"],)).fetchone()[0])
            assert stored == row["private_pem"]
            path.unlink()                                      # imported: the file is not needed any more
            await enqueue(d, setup, ["bob@dest.test"])
            (got,) = await sink.wait_for(1)
            assert signers(got.data) == setup["selectors"] and all_verify(got.data, dkim_dnsfunc(dns_server))


async def test_a_key_with_no_pem_and_no_file_is_a_health_problem_and_holds_its_mail(tmp_path, dns_server):
    """Not sent unsigned: held with the reason, /health and status name it; the file restored, the
    next import takes it and released mail goes out signed."""
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="rsa") as (d, setup):
            path = tmp_path / "restored" / "key.pem"
            row = await as_before_0033(d, str(path))
            assert [m["selector"] for m in await importer(d).import_once()] == setup["selectors"]
            line = missing_key(setup["domain"], row["selector"], str(path), "is missing")
            health = await d.call("daemon.health")
            assert not health["ok"] and f"dkim: {line}" in health["problems"]
            assert (await d.call("status"))["dkim_keys"]["missing"][0]["problem"] == line
            shown = await asyncio.to_thread(CliRunner().invoke, main, ["--socket", str(d.daemon.paths.socket), "status"])
            assert shown.exit_code == 0 and line in shown.output, shown.output

            qid = await enqueue(d, setup, ["bob@dest.test"])
            await wait_events(d, qid, "held")
            held = (await recipients(d, qid))["bob@dest.test"]
            assert held["state"] == "held" and held["hold_reason"] == missing_key(setup["domain"], row["selector"], str(path))
            assert sink.messages == []

            path.parent.mkdir()
            path.write_text(row["private_pem"])
            assert await importer(d).import_once() == []
            assert not [p for p in (await d.call("daemon.health"))["problems"] if p.startswith("dkim:")]
            await d.daemon.scheduler.reload(d.daemon.config)   # the route cache, as its TTL would
            await d.call("queue.release", ids=[qid])
            (got,) = await sink.wait_for(1)
            assert all_verify(got.data, dkim_dnsfunc(dns_server))


def test_an_imported_file_must_be_a_private_key_of_the_rows_algorithm(tmp_path):
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(path, 0o600)
    assert read_key_file(str(path), "ed25519").startswith("-----BEGIN PRIVATE KEY-----")
    with pytest.raises(ValueError, match="is not an rsa key"):
        read_key_file(str(path), "rsa")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ValueError, match="is not a private key"):
        read_key_file(str(tmp_path / "junk.pem"), "ed25519")
    with pytest.raises(ValueError, match="is missing"):
        read_key_file(str(tmp_path / "gone.pem"), "rsa")
