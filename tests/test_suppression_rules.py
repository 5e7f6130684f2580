"""Suppression rules and their store side: address normalisation, the scopes of a send, what an
outcome does to the list (hard, soft counting in a window, complaints), the RCPT probe, migration
0012's 'suppressed' state, and the sweeper's ageing of expired entries."""

from __future__ import annotations

import time

import pytest

from gateway import suppression
from gateway.errors import InvalidArgument
from gateway.feedback import arf, dsn
from gateway.services.suppressions import SuppressionService
from gateway.store import Store
from gateway.config import StoreConfig
from gateway.suppression import Feedback, feedback, normalise_address, scopes_for
from gateway.unsubscribe.links import Keyring
from tests.support.inbound import sign_tags, signed_return_path
from tests.test_bounce_classify import DATA

SOFT = {"soft_limit": 3, "soft_window": 100.0, "soft_for": 50.0}


@pytest.fixture
async def store(tmp_path, store_url):
    s = await Store.open(tmp_path / "gateway.db", StoreConfig(url=store_url))
    s.acme = (await s.tenants.add("acme"))["id"]
    s.other = (await s.tenants.add("other"))["id"]
    yield s
    await s.close()


def test_normalise_address_one_spelling():
    assert normalise_address(" <JDoe@Example.ORG> ") == "jdoe@example.org"
    assert normalise_address("a@b.example.") == "a@b.example"
    for bad in ("", "no-at", "@example.org", "a@", "a b@example.org", "a@example.org,b@example.org", "x" * 250 + "@e.org"):
        with pytest.raises(InvalidArgument):
            normalise_address(bad)


def test_scopes_of_a_send():
    ctx = {"usecase_id": 7, "domain_id": 3, "kind": "transactional"}
    assert scopes_for(ctx) == [("tenant", 0), ("domain", 3), ("usecase", 7)]
    assert scopes_for({**ctx, "kind": "marketing"})[-1] == ("marketing", 0)


def test_feedback_rules():
    assert feedback("bounced", "hard", "X@Y.example", "q1", **SOFT) == Feedback("x@y.example", "hard", "q1")
    assert feedback("bounced", "soft", "x@y.example", "q1", **SOFT).kind == "soft"
    assert feedback("deferred", "soft", "x@y.example", "q1", **SOFT) is None      # a deferral counts nothing
    for kind in ("block", "rate", "quota", "unknown"):
        assert feedback("bounced", kind, "x@y.example", "q1", **SOFT) is None      # the address is fine or unknown
    assert feedback("delivered", "", "x@y.example", "q1", **SOFT).kind == "clear"
    assert feedback("bounced", "soft", "x@y.example", "q1", soft_limit=0, soft_window=1, soft_for=1) is None
    assert feedback("bounced", "hard", "not an address", "q1", **SOFT) is None
    refusal = suppression.refusal({"reason": "complaint", "scope": "marketing", "scope_id": 0, "source": "arf"})
    assert refusal.reply.startswith("550 5.7.1 Recipient suppressed: its owner reported our mail as spam")


async def test_soft_failures_in_a_window_then_suppressed_for_a_while(store):
    fb = Feedback("full@example.org", "soft", "q1", 3, 100.0, 50.0)
    scopes = [("tenant", 0)]
    for at in (0.0, 10.0):
        await store.suppressions.apply(store.acme, fb, now=at)
    await store.suppressions.apply(store.acme, fb, now=150.0)     # the window ran out: counting starts again
    await store.suppressions.apply(store.acme, fb, now=160.0)
    assert await store.suppressions.live(store.acme, "full@example.org", scopes, now=161.0) is None
    await store.suppressions.apply(store.acme, Feedback("full@example.org", "clear", "q2"), now=170.0)   # a delivery clears
    for at in (200.0, 210.0, 220.0):
        await store.suppressions.apply(store.acme, fb, now=at)
    entry = await store.suppressions.live(store.acme, "full@example.org", scopes, now=221.0)
    assert entry["reason"] == "soft_bounce" and entry["expires_at"] == 270.0
    assert await store.suppressions.live(store.acme, "full@example.org", scopes, now=270.0) is None
    assert await store.suppressions.live(store.other, "full@example.org", scopes, now=221.0) is None


async def test_live_probe_takes_scopes_in_order_and_ignores_the_rest(store):
    await store.suppressions.add(store.acme, ("usecase", 9), "a@example.org", "unsubscribe")
    await store.suppressions.add(store.acme, ("marketing", 0), "a@example.org", "complaint")
    transactional = [("tenant", 0), ("domain", 1), ("usecase", 2)]
    assert await store.suppressions.live(store.acme, "a@example.org", transactional) is None
    assert (await store.suppressions.live(store.acme, "a@example.org", transactional + [("marketing", 0)]))["reason"] == "complaint"
    assert (await store.suppressions.live(store.acme, "a@example.org", [("usecase", 9), ("marketing", 0)]))["reason"] == "unsubscribe"


async def test_asynchronous_reports_hard_dsn_and_complaint(store):
    service = SuppressionService(store)
    [bounce] = dsn.parse((DATA / "gmail-no-such-user.eml").read_bytes()).bounces
    assert await service.from_report(store.acme, bounce.recipient, bounce.kind, source="0h3k9x2a7mq4rt5b") == "suppressed"
    complaint = arf.parse((DATA / "arf" / "yahoo-abuse.eml").read_bytes())
    assert await service.from_report(store.acme, complaint.recipient, "complaint", source=complaint.verp.queue_id) == "suppressed"
    [garbled] = dsn.parse((DATA / "garbled-unknown.eml").read_bytes()).bounces
    assert garbled.kind == "unknown" and garbled.recipient == ""
    assert await service.from_report(store.acme, "someone@example.org", "unknown", source="x") == "recorded"
    rows = {(r["address"], r["scope"], r["reason"]) for r in await store.suppressions.list(store.acme)}
    assert rows == {("lost.contact@gmail.com", "tenant", "hard_bounce"), ("angry.reader@yahoo.com", "marketing", "complaint")}
    kinds = [e["kind"] for e in await store.events.list(tenant_id=store.acme) if e["kind"] in ("bounced", "complained")]
    assert kinds == ["bounced", "complained", "bounced"]
    # A complaint suppresses marketing only: a transactional send still goes.
    transactional = [("tenant", 0), ("domain", 1), ("usecase", 2)]
    assert await store.suppressions.live(store.acme, "angry.reader@yahoo.com", transactional) is None


@pytest.mark.sqlite_only
async def test_migration_0012_suppressed_is_a_final_state(store, tmp_path):
    """The widened CHECK is what a fresh connection to the file reads (the schema text was edited)."""
    import sqlite3

    conn = sqlite3.connect(tmp_path / "gateway.db", isolation_level=None)
    try:
        conn.execute("PRAGMA foreign_keys = OFF")   # no use case rows needed for this
        conn.execute("BEGIN")
        conn.execute("INSERT INTO messages (queue_id, tenant_id, usecase_id, mail_from, message_id, body, size, created_at, expires_at)"
                     " VALUES ('q', ?, 0, 'a@b', 'm', X'', 0, 0, 1)", (store.acme,))
        mid = conn.execute("SELECT id FROM messages WHERE queue_id = 'q'").fetchone()[0]
        conn.execute("INSERT INTO recipients (message_id, tenant_id, usecase_id, rcpt, domain, state, next_attempt_at, updated_at)"
                     " VALUES (?, ?, 0, 'x@y', 'y', 'pending', 0, 0)", (mid, store.acme))
        conn.execute("UPDATE recipients SET state = 'suppressed', updated_at = 5 WHERE message_id = ?", (mid,))
        assert conn.execute("SELECT finished_at FROM finished_messages WHERE message_id = ?", (mid,)).fetchone()[0] == 5
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE recipients SET state = 'bogus' WHERE message_id = ?", (mid,))
        conn.execute("ROLLBACK")
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


async def test_sweeper_ages_out_expired_entries_and_stale_counts(store):
    now = time.time()
    await store.suppressions.add(store.acme, ("tenant", 0), "old@example.org", "soft_bounce", expires_at=now - 1000)
    await store.suppressions.add(store.acme, ("tenant", 0), "live@example.org", "soft_bounce", expires_at=now + 1000)
    await store.suppressions.add(store.acme, ("tenant", 0), "hard@example.org", "hard_bounce")
    await store.suppressions.apply(store.acme, Feedback("stale@example.org", "soft", "q", 5, 10.0, 10.0), now=now - 1000)
    done = await store.retention.delete_expired_suppressions(now - 500, max_rows=100)
    assert done["rows"] == 2
    assert sorted(r["address"] for r in await store.suppressions.list(store.acme)) == ["hard@example.org", "live@example.org"]


async def _marketing_usecase(store) -> int:
    def domain_and_usecase(conn):
        conn.execute("INSERT INTO domains (tenant_id, name, verification_token, state, created_at)"
                     " VALUES (?, 'shop.example.com', 't', 'verified', 0)", (store.acme,))
        did = conn.execute("SELECT id FROM domains").fetchone()[0]
        conn.execute("INSERT INTO usecases (tenant_id, domain_id, name, entity, kind, unsubscribe_scope, route, rate_limit, created_at)"
                     " VALUES (?, ?, 'news', 'Shop', 'marketing', 'usecase', 'direct', 0, 0)", (store.acme, did))
        return conn.execute("SELECT id FROM usecases").fetchone()[0]

    return await store.db.write(domain_and_usecase)


async def test_reports_matched_by_verp_to_a_queued_message(store):
    """What the inbound path will hand over: a DSN or ARF arriving at a VERP return path of a real
    queued message. Hard DSN -> tenant suppression; ARF -> marketing only; a DSN about someone else,
    an unknown tag or an unrecognised report -> recorded, nothing suppressed."""
    from gateway.store.queue import NewMessage

    usecase_id = await _marketing_usecase(store)
    qid = "0h3k9x2a7mq4rt5b"
    await store.queue.put(NewMessage(queue_id=qid, tenant_id=store.acme, usecase_id=usecase_id, mail_from="news@shop.example.com",
                                     message_id=f"{qid}@shop.example.com", body=b"Subject: x\r\n\r\nx\r\n",
                                     recipients=["jdoe@example.org", "b@example.org", "c@example.org", "angry.reader@yahoo.com"]))
    keyring = Keyring(store)
    service = SuppressionService(store, verp=keyring.signed)
    key = await keyring.signing()
    unsigned = (DATA / "postfix-user-unknown.eml").read_bytes()   # VERP tag .0 -> jdoe@example.org
    # As the corpus has it (no MAC), and as a forger who guessed the queue id would send it: nothing.
    assert (await service.handle_report(unsigned))["matched"] is False
    assert (await SuppressionService(store).handle_report(sign_tags(unsigned, key)))["matched"] is False   # no keyring
    assert await store.suppressions.list(store.acme) == []
    raw = sign_tags(unsigned, key)   # the return path delivery really gave it
    assert await service.handle_report(raw) == {"type": "bounce", "matched": True, "done": ["suppressed"]}
    assert (await store.suppressions.live(store.acme, "jdoe@example.org", [("tenant", 0)]))["source"] == qid
    other = sign_tags((DATA / "gmail-no-such-user.eml").read_bytes(), key)   # same tag, but it names lost.contact@gmail.com
    assert (await service.handle_report(other))["done"] == ["recorded"]
    complaint = sign_tags((DATA / "arf" / "yahoo-abuse.eml").read_bytes(), key)   # VERP .3 -> angry.reader@yahoo.com
    assert await service.handle_report(complaint) == {"type": "complaint", "matched": True, "done": ["suppressed"]}
    assert (await store.suppressions.live(store.acme, "angry.reader@yahoo.com", [("marketing", 0)]))["reason"] == "complaint"
    unknown_tag = (DATA / "arf" / "microsoft-jmrp-redacted.eml").read_bytes()   # a queue id we never had
    assert (await service.handle_report(unknown_tag))["matched"] is False
    # The return path stripped, but our Feedback-ID and the Original-Rcpt-To survive: the tenant is found.
    tagged = signed_return_path("bounces.shop.example.com", qid, 3, key)
    assert tagged.encode() in complaint
    stripped = complaint.replace(tagged.encode(), b"someone@bounces.shop.example.com").replace(
        b"Feedback-ID: newsletter:acme:gw", f"Feedback-ID: u{usecase_id}:t{store.acme}:gateway".encode())
    stripped = stripped.replace(b"angry.reader@yahoo.com", b"second.reader@yahoo.com")
    assert await service.handle_report(stripped) == {"type": "complaint", "matched": True, "done": ["suppressed"]}
    forged = stripped.replace(f":t{store.acme}:".encode(), b":t999:")   # no such tenant
    assert (await service.handle_report(forged))["matched"] is False
    assert sorted(r["address"] for r in await store.suppressions.list(store.acme)) == [
        "angry.reader@yahoo.com", "jdoe@example.org", "second.reader@yahoo.com"]
    assert [e["kind"] for e in await store.events.list(tenant_id=store.acme) if e["kind"] in ("bounced", "complained")] == [
        "bounced", "bounced", "complained", "complained"]


async def test_a_report_naming_only_a_local_part_suppresses_the_tagged_recipient_of_that_name(store):
    """yale_01 names only 'userx' (the parser infers yale.edu from the reporting MTA); the VERP tag names
    the address really sent to, userx@cs.yale.edu: the same local part, so that address is suppressed
    (before: the inferred address differed from the tagged one and the report was only recorded). A
    tag naming another local part is still only recorded."""
    from gateway.store.queue import NewMessage
    from tests.test_bounce_classify import FLUFL

    qid = "0h3k9x2a7mq4rt5c"
    await store.queue.put(NewMessage(queue_id=qid, tenant_id=store.acme, usecase_id=await _marketing_usecase(store), mail_from="news@shop.example.com",
                                     message_id=f"{qid}@shop.example.com", body=b"Subject: x\r\n\r\nx\r\n",
                                     recipients=["UserX@cs.yale.edu", "someone@cs.yale.edu"]))
    keyring = Keyring(store)
    service = SuppressionService(store, verp=keyring.signed)
    key = await keyring.signing()
    raw = (FLUFL / "yale_01.eml").read_bytes()
    other = await service.handle_report(raw, signed_return_path("bounces.shop.example.com", qid, 1, key))
    assert other == {"type": "bounce", "matched": True, "done": ["recorded"]}
    assert await store.suppressions.list(store.acme) == []
    done = await service.handle_report(raw, signed_return_path("bounces.shop.example.com", qid, 0, key))
    assert done == {"type": "bounce", "matched": True, "done": ["recorded"]}   # yale_01's text says no class
    done = await service.handle_report(raw.replace(b"No matches to nameserver query", b"550 5.1.1 user unknown"),
                                       signed_return_path("bounces.shop.example.com", qid, 0, key))
    assert done == {"type": "bounce", "matched": True, "done": ["suppressed"]}
    assert [r["address"] for r in await store.suppressions.list(store.acme)] == ["userx@cs.yale.edu"]


async def test_the_rcpt_refusal_does_not_wait_for_its_event_to_commit(store):
    """The 'suppressed' event is queued, not awaited: with the writer held inside a write, the hook
    still answers 550 at once (before, it waited for the group commit); the event commits when the
    writer moves on."""
    import asyncio
    import threading

    from gateway.errors import SMTPError

    await store.suppressions.add(store.acme, ("tenant", 0), "gone@example.org", "hard_bounce")
    held, release = threading.Event(), threading.Event()

    def hold(conn):
        held.set()
        release.wait(10)

    blocker = asyncio.ensure_future(store.db.write(hold))
    await asyncio.to_thread(held.wait, 10)
    ctx = {"tenant_id": store.acme, "usecase_id": 1, "domain_id": 1, "kind": "transactional", "name": "receipts"}
    try:
        with pytest.raises(SMTPError) as refused:
            await asyncio.wait_for(SuppressionService(store).at_rcpt(ctx, "Gone@Example.org"), 5)
        assert refused.value.code == 550
        assert await store.events.list(kind="suppressed") == []
    finally:
        release.set()
    await blocker
    await store.db.write(lambda conn: None)   # FIFO: the queued event committed before this
    [event] = await store.events.list(kind="suppressed")
    assert (event["subject"], event["data"]["checked"], event["data"]["action"]) == ("gone@example.org", "rcpt", "refused")


async def test_suppressed_events_queued_together_share_one_write_and_keep_their_place(store):
    """Refusals made while the writer is busy join one queued write (one commit, instead of one per
    refusal: each commit also empties the readers' page caches); the batch keeps the place of its
    first event in the write queue, so an accept-drop's event commits before a write queued after it
    (the message the session goes on to spool), even one queued before the later refusals. Once the
    writer has taken the batch, the next refusal starts a new one."""
    import asyncio
    import threading

    from gateway.errors import SMTPError

    for who in ("a", "b", "c", "d"):
        await store.suppressions.add(store.acme, ("tenant", 0), f"{who}@example.org", "hard_bounce")
    held, release = threading.Event(), threading.Event()

    def hold(conn):
        held.set()
        release.wait(10)

    blocker = asyncio.ensure_future(store.db.write(hold))
    await asyncio.to_thread(held.wait, 10)
    service = SuppressionService(store)
    drop = {"tenant_id": store.acme, "usecase_id": 1, "domain_id": 1, "kind": "transactional", "name": "app",
            "suppressed_action": "accept-drop"}
    try:
        assert await service.at_rcpt(drop, "a@example.org") == "drop"
        spooled = asyncio.ensure_future(store.events.append(store.acme, "queued", "the-message"))   # queued after it
        await asyncio.sleep(0)
        for who in ("b", "c"):
            with pytest.raises(SMTPError):
                await service.at_rcpt({**drop, "suppressed_action": "refuse"}, f"{who}@example.org")
        batch = store.suppressions._batch
        assert [row[2] for row in batch.rows] == ["a@example.org", "b@example.org", "c@example.org"]
    finally:
        release.set()
    await blocker
    await spooled
    with pytest.raises(SMTPError):
        await service.at_rcpt({**drop, "suppressed_action": "refuse"}, "d@example.org")
    assert store.suppressions._batch is not batch and batch.sealed
    await store.db.write(lambda conn: None)
    events = [(e["kind"], e["subject"]) for e in await store.events.list(tenant_id=store.acme) if e["kind"] in ("suppressed", "queued")]
    assert events == [("suppressed", "a@example.org"), ("suppressed", "b@example.org"), ("suppressed", "c@example.org"),
                      ("queued", "the-message"), ("suppressed", "d@example.org")]
