"""The DKIM signer against dkimpy's verifier and the published keys."""

from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.delivery.dkim import SigningError, Signer, SigningKey, relaxed_body, split_message
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, enqueue, publish_mx
from tests.support.sink import mail_sink


def make_key(algorithm: str) -> tuple[str, bytes]:
    """A private key's PEM (as the store holds it) and its DNS TXT record."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem.decode("ascii"), record


def verifies(message: bytes, dnsfunc, idx: int = 0) -> bool:
    """dkimpy's verdict; it raises rather than returning False for some failures (body hash)."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


@pytest.fixture(scope="module")
def keys():
    rsa_pem, rsa_record = make_key("rsa")
    ed_pem, ed_record = make_key("ed25519")
    records = {b"s1._domainkey.example.com.": rsa_record, b"e1._domainkey.example.com.": ed_record}
    return {
        "rsa": SigningKey("example.com", "s1", "rsa", rsa_pem),
        "ed25519": SigningKey("example.com", "e1", "ed25519", ed_pem),
        "dns": lambda name, timeout=5: records.get(name),
    }


MESSAGES = {
    "plain": b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hi\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
             b"Message-ID: <1@example.com>\r\n\r\nHello Bob.\r\n",
    "folded and spaced": b"From:   Alice\r\n  <alice@example.com>  \r\nTo: bob@example.org,\r\n\tcarol@example.org\r\n"
                         b"Subject:  a   long\r\n subject\t \r\nMIME-Version: 1.0\r\nContent-Type: text/plain;\r\n charset=utf-8\r\n\r\n"
                         b"line  with   spaces \t\r\n\r\n\r\ntrailing blank lines above\r\n\r\n\r\n",
    "empty body": b"From: a@example.com\r\nTo: b@example.org\r\nSubject: empty\r\n\r\n",
    "no body separator": b"From: a@example.com\r\nTo: b@example.org\r\nSubject: none\r\n",
    "bare LF": b"From: a@example.com\nTo: b@example.org\nSubject: lf\n\nbody\nmore body\n",
    "two To headers": b"From: a@example.com\r\nTo: b@example.org\r\nTo: c@example.org\r\nSubject: x\r\n\r\nbody",
}


@pytest.mark.parametrize("name", MESSAGES)
def test_signatures_verify_with_dkimpy(keys, name):
    signed = Signer().sign(MESSAGES[name], [keys["rsa"], keys["ed25519"]], now=1_700_000_000)
    assert signed.count(b"DKIM-Signature:") == 2
    d = dkim.DKIM(signed)
    assert d.verify(idx=0, dnsfunc=keys["dns"]), name
    assert d.verify(idx=1, dnsfunc=keys["dns"]), name
    sig = dkim.util.parse_tag_value(d.headers[0][1])
    assert sig[b"c"] == b"relaxed/relaxed" and sig[b"a"] == b"rsa-sha256"
    assert dkim.util.parse_tag_value(d.headers[1][1])[b"a"] == b"ed25519-sha256"


def test_oversigned_headers_cannot_be_added(keys):
    signed = Signer().sign(MESSAGES["plain"], [keys["rsa"]])
    h = dkim.util.parse_tag_value(dkim.DKIM(signed).headers[0][1])[b"h"].split(b":")
    for name in (b"from", b"to", b"subject", b"date", b"message-id"):
        assert h.count(name) == 2, name  # present once, signed twice
    forged = signed.replace(b"Subject: hi\r\n", b"Subject: hi\r\nSubject: pay now\r\n")
    assert not verifies(forged, keys["dns"])


def test_modified_body_fails_and_whitespace_change_passes(keys):
    signed = Signer().sign(MESSAGES["plain"], [keys["rsa"]])
    assert not verifies(signed.replace(b"Hello Bob.", b"Hello Eve."), keys["dns"])
    # relaxed: re-spacing and trailing blank lines do not matter
    assert verifies(signed.replace(b"Hello Bob.", b"Hello   Bob.") + b"\r\n\r\n", keys["dns"])


def test_relaxed_body_matches_dkimpy():
    from dkim.canonicalization import Relaxed

    for body in [b"", b"\r\n", b"\r\n\r\n", b"a", b"a \t b  \r\n\r\n", b"x\r\n \r\n", b" lead\r\n"]:
        assert relaxed_body(body) == Relaxed.canonicalize_body(body), body


def test_split_message_keeps_folding():
    headers, body = split_message(b"A: 1\r\n 2\r\nB:3\r\n\r\nbody")
    assert headers == [(b"A", b" 1\r\n 2"), (b"B", b"3")] and body == b"body"


def test_key_problems_raise_signing_error(keys):
    with pytest.raises(SigningError, match="x of example.com: cannot load"):
        Signer().sign(MESSAGES["plain"], [SigningKey("example.com", "x", "rsa", "not a key")])
    with pytest.raises(SigningError):  # an ed25519 key listed as rsa
        Signer().sign(MESSAGES["plain"], [SigningKey("example.com", "e1", "rsa", keys["ed25519"].private_pem)])


def test_the_private_key_is_not_in_the_repr(keys):
    """A SigningKey in a log line or a traceback's locals shows its name, never its key."""
    assert "PRIVATE" not in repr(keys["rsa"]) and "s1" in repr(keys["rsa"])


def test_keys_are_parsed_once(keys):
    signer = Signer()
    first = signer.private_key(keys["rsa"])
    assert signer.private_key(SigningKey("example.com", "s1", "rsa", keys["rsa"].private_pem)) is first


# --------------------------------------------------------------------------- key material: parsed once per PEM


def public_bytes(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_new_key_under_the_same_name_is_never_signed_with_the_old_pem():
    """The cache is keyed by the PEM: a selector reused with a new key (a row replaced) signs with the new one."""
    signer = Signer()
    old_pem, old_record = make_key("rsa")
    new_pem, new_record = make_key("rsa")
    assert verifies(signer.sign(MESSAGES["plain"], [SigningKey("example.com", "s1", "rsa", old_pem)]),
                    lambda name, timeout=5: old_record)
    signed = signer.sign(MESSAGES["plain"], [SigningKey("example.com", "s1", "rsa", new_pem)])
    assert verifies(signed, lambda name, timeout=5: new_record)
    assert not verifies(signed, lambda name, timeout=5: old_record)


def test_loaded_keys_are_bounded():
    signer = Signer(max_keys=4)
    pems = [make_key("ed25519")[0] for _ in range(9)]
    for pem in pems:
        signer.private_key(SigningKey("example.com", "e1", "ed25519", pem))
    assert len(signer._keys) <= 4 and pems[-1] in signer._keys  # noqa: SLF001


async def test_a_key_replaced_in_the_store_signs_the_next_message_after_sighup(tmp_path, dns_server):
    """The daemon: a message signed with the domain's key; the key's PEM replaced in its row (an
    operator's restore, say) and delivery reloaded; the next message is signed with the new key."""
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="rsa") as (d, setup):
            await enqueue(d, setup, ["bob@dest.test"])
            (first,) = await sink.wait_for(1)
            assert dkim.DKIM(first.data).verify(dnsfunc=dkim_dnsfunc(dns_server))
            new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            await d.store.db.write(lambda c: c.execute("UPDATE dkim_keys SET private_pem = ? WHERE state = 'active'", (pem.decode(),)))
            # What SIGHUP does to delivery (Daemon._reload; the test daemon has no config file to reread).
            await d.daemon.scheduler.reload(d.daemon.config)
            await enqueue(d, setup, ["carol@dest.test"])
            second = (await sink.wait_for(2))[1]
            record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_bytes(new))
            assert dkim.DKIM(second.data).verify(dnsfunc=lambda name, timeout=5: record)
            assert not dkim.DKIM(second.data).verify(dnsfunc=dkim_dnsfunc(dns_server))   # not the old key
