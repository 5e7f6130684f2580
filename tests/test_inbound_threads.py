"""Thread resolution (gateway/inbound/threads.py): parents only within the tenant and use case."""

from __future__ import annotations

from gateway.inbound.threads import CROSS_TENANT, CROSS_USECASE, candidates, resolve


def rec(mid, tenant, usecase, thread, direction="out"):
    return {"message_id": mid, "tenant_id": tenant, "usecase_id": usecase, "thread_id": thread, "direction": direction}


def test_in_reply_to_first_then_references_newest_first():
    assert candidates(["c"], ["a", "b", "c"]) == ["c", "b", "a"]
    assert candidates([], ["a", "b"]) == ["b", "a"]


def test_attached_to_the_known_parent_of_the_same_tenant_and_usecase():
    t = resolve("r1", ["o2"], ["o1", "o2"], tenant_id=1, usecase_id=5, records=[rec("o1", 1, 5, "o1"), rec("o2", 1, 5, "o1")])
    assert (t.thread_id, t.parent, t.flag) == ("o1", "o2", "")


def test_references_find_the_parent_when_in_reply_to_is_unknown():
    t = resolve("r1", ["unknown"], ["o1"], tenant_id=1, usecase_id=5, records=[rec("o1", 1, 5, "o1")])
    assert (t.thread_id, t.parent) == ("o1", "o1")


def test_unknown_parent_starts_a_new_thread():
    t = resolve("r1", ["nobody"], [], tenant_id=1, usecase_id=5, records=[])
    assert (t.thread_id, t.parent, t.flag) == ("r1", "", "")


def test_another_usecase_is_refused_and_flagged():
    t = resolve("r1", ["o1"], [], tenant_id=1, usecase_id=5, records=[rec("o1", 1, 6, "o1")])
    assert (t.thread_id, t.parent, t.flag, t.refused) == ("r1", "", CROSS_USECASE, "o1")


def test_another_tenant_is_refused_even_when_an_older_reference_is_ours():
    records = [rec("theirs", 2, 9, "theirs"), rec("ours", 1, 5, "ours")]
    t = resolve("r1", ["theirs"], ["ours"], tenant_id=1, usecase_id=5, records=records)
    assert (t.thread_id, t.parent, t.flag) == ("r1", "", CROSS_TENANT)
    assert t.refused_detail == {"tenant_id": 2}


def test_the_same_id_in_both_tenants_resolves_to_ours():
    # One message sent to two tenants is recorded under each: ours wins, nobody is flagged.
    records = [rec("m", 2, 9, "t2", "in"), rec("m", 1, 5, "t1", "in")]
    t = resolve("r1", ["m"], [], tenant_id=1, usecase_id=5, records=records)
    assert (t.thread_id, t.parent, t.flag) == ("t1", "m", "")


def test_a_message_naming_itself_answers_nothing():
    t = resolve("m", ["m"], [], tenant_id=1, usecase_id=5, records=[rec("m", 1, 5, "old")])
    assert (t.thread_id, t.parent) == ("m", "")


def test_a_new_message_reusing_another_use_cases_root_id_gets_a_fresh_thread():
    t = resolve("s1", [], [], tenant_id=1, usecase_id=5, records=[rec("s1", 1, 6, "s1")], fresh="q1.inbound@gw")
    assert (t.thread_id, t.parent, t.flag) == ("q1.inbound@gw", "", "")
    # Another tenant's record: the id is kept (threads are read per tenant; a fresh id would be an oracle).
    t = resolve("s1", [], [], tenant_id=1, usecase_id=5, records=[rec("s1", 2, 9, "s1")], fresh="q1.inbound@gw")
    assert t.thread_id == "s1"
    # Refused parent and a reused root together: still the fresh id.
    t = resolve("s1", ["o1"], [], tenant_id=1, usecase_id=5, records=[rec("s1", 1, 6, "s1"), rec("o1", 1, 6, "o1")], fresh="q1.inbound@gw")
    assert (t.thread_id, t.flag) == ("q1.inbound@gw", CROSS_USECASE)
    # Its own use case's record of the id (a resent copy) keeps the id.
    t = resolve("m", [], [], tenant_id=1, usecase_id=5, records=[rec("m", 1, 5, "old")], fresh="q1.inbound@gw")
    assert t.thread_id == "m"
