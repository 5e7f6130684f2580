"""VERP return paths (gateway/verp.py): the tag names a message and a recipient and carries a MAC, so a
DSN to a tag guessed from a neighbouring queue id names nothing."""

import pytest

from gateway import verp
from gateway.store.queue import QueueIds

KEY = (3, b"k" * 32)


def test_a_signed_return_path_round_trips_in_any_case():
    qid = QueueIds().new()
    base = verp.bounce_address("Bounces.Example.COM.")
    assert base == "bounces@bounces.example.com"
    rp = verp.return_path(base, qid, 7, KEY)
    assert rp.startswith(f"bounces+{qid}.7.3.") and rp.endswith("@bounces.example.com")
    tag = verp.decode(rp)
    assert (tag.queue_id, tag.recipient_index, tag.base, tag.key_id) == (qid, 7, base, 3)
    assert verp.verify(tag, {3: KEY[1]})
    assert verp.decode(f"<{rp.upper()}>") == tag   # some MTAs change the case of local parts
    assert verp.verify(verp.decode(rp.upper()), {3: KEY[1]})
    assert len(rp.partition("@")[0]) <= 64


def test_a_guessed_tampered_or_foreign_tag_does_not_verify():
    qid = "0h3k9x2a7mq4rt5b"
    rp = verp.return_path("bounces@bounces.acme.test", qid, 0, KEY)
    keys = {3: KEY[1]}
    neighbour = rp.replace(f"{qid}.0.", f"{qid[:-1]}c.0.")           # the next queue id, same MAC
    other_rcpt = rp.replace(f"{qid}.0.", f"{qid}.1.")                  # another recipient of the message
    other_domain = rp.replace("@bounces.acme.test", "@bounces.evil.test")   # another tenant's return path
    unsigned = f"bounces+{qid}.0@bounces.acme.test"                    # what a version before the MAC sent
    for forged in (neighbour, other_rcpt, other_domain, unsigned):
        tag = verp.decode(forged)
        assert tag is not None and not verp.verify(tag, keys), forged
    assert not verp.verify(verp.decode(rp), {4: KEY[1]})               # a key we do not hold (retired)
    assert not verp.verify(verp.decode(rp), {3: b"x" * 32})


@pytest.mark.parametrize("address", ["bounces@example.com", "bounces+nonsense@example.com", "bounces+ab.1@example.com",
                                     "+0123456789abcdef.1@example.com", "bounces+0123456789abcdef.x@example.com", "nope",
                                     "bounces+0123456789abcdef.1.3.short@example.com",
                                     "bounces+0123456789abcdef.1.3.abcdefgh1@example.com"])
def test_decode_rejects_what_is_not_a_tag(address):
    assert verp.decode(address) is None


def test_return_path_refuses_bad_input():
    for base, qid in (("no-at-sign", "0123456789abcdef"), ("a+b@example.com", "0123456789abcdef"),
                      ("x" * 40 + "@example.com", "0123456789abcdef"), ("bounces@example.com", "not-a-queue-id!")):
        with pytest.raises(ValueError):
            verp.return_path(base, qid, 0, KEY)
