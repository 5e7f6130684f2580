"""The DKIM signer against dkimpy's verifier and the published keys."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from gateway.delivery.dkim import RECHECK, SigningError, Signer, SigningKey, relaxed_body, split_message
from tests.support.delivery import delivering_daemon, dkim_dnsfunc, enqueue, publish_mx
from tests.support.sink import mail_sink


def write_key(tmp_path, algorithm: str, name: str) -> tuple[str, bytes]:
    """A private key file and its DNS TXT record."""
    if algorithm == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(path), record


def verifies(message: bytes, dnsfunc, idx: int = 0) -> bool:
    """dkimpy's verdict; it raises rather than returning False for some failures (body hash)."""
    try:
        return dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    rsa_path, rsa_record = write_key(d, "rsa", "rsa")
    ed_path, ed_record = write_key(d, "ed25519", "ed")
    records = {b"s1._domainkey.example.com.": rsa_record, b"e1._domainkey.example.com.": ed_record}
    return {
        "rsa": SigningKey("example.com", "s1", "rsa", rsa_path),
        "ed25519": SigningKey("example.com", "e1", "ed25519", ed_path),
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


def test_key_problems_raise_signing_error(tmp_path, keys):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(SigningError):
        Signer().sign(MESSAGES["plain"], [SigningKey("example.com", "x", "rsa", str(bad))])
    with pytest.raises(SigningError):
        Signer().sign(MESSAGES["plain"], [SigningKey("example.com", "x", "rsa", str(tmp_path / "missing.pem"))])
    with pytest.raises(SigningError):  # an ed25519 key listed as rsa
        Signer().sign(MESSAGES["plain"], [SigningKey("example.com", "e1", "rsa", keys["ed25519"].key_path)])


def test_keys_are_cached(keys):
    signer = Signer()
    first = signer.private_key(keys["rsa"].key_path)
    assert signer.private_key(keys["rsa"].key_path) is first


# --------------------------------------------------------------------------- key material: loaded once, reloaded on change


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def public_bytes(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_a_loaded_key_signs_without_its_file_being_looked_at(tmp_path):
    """No os.stat per signature: with the file gone, the loaded key still signs until the next look."""
    path, _ = write_key(tmp_path, "ed25519", "gone")
    clock = Clock()
    signer = Signer(clock=clock)
    key = SigningKey("example.com", "e1", "ed25519", path)
    signer.sign(MESSAGES["plain"], [key])
    (tmp_path / "gone.pem").unlink()
    assert b"DKIM-Signature:" in signer.sign(MESSAGES["plain"], [key])
    clock.now += RECHECK + 0.1
    with pytest.raises(SigningError, match="No such file"):
        signer.sign(MESSAGES["plain"], [key])


def test_a_key_file_replaced_in_place_is_used_after_the_recheck_or_at_once_after_forget(tmp_path):
    path, _ = write_key(tmp_path, "rsa", "k")
    clock = Clock()
    signer = Signer(clock=clock)
    first = signer.private_key(path)
    write_key(tmp_path, "rsa", "k")   # a new key at the same path
    os.utime(path, ns=(1, 1))         # whatever the file system's timestamp granularity
    assert signer.private_key(path) is first                  # not looked at yet
    clock.now += RECHECK + 0.1
    second = signer.private_key(path)
    assert public_bytes(second) != public_bytes(first)
    assert signer.private_key(path) is second                 # looked at, unchanged: kept
    write_key(tmp_path, "rsa", "k")
    signer.forget()                                           # SIGHUP
    assert public_bytes(signer.private_key(path)) not in (public_bytes(first), public_bytes(second))


def test_loaded_keys_are_bounded(tmp_path):
    signer = Signer(max_keys=4)
    paths = [write_key(tmp_path, "ed25519", f"k{i}")[0] for i in range(9)]
    for path in paths:
        signer.private_key(path)
    assert len(signer._keys) <= 4 and paths[-1] in signer._keys  # noqa: SLF001


async def test_a_key_replaced_in_place_signs_the_next_message_after_sighup(tmp_path, dns_server):
    """The daemon: a message signed with the domain's key; the key file replaced in place (an
    operator's restore, say) and delivery reloaded; the next message is signed with the new key."""
    async with mail_sink() as sink:
        publish_mx(dns_server, "dest.test")
        async with delivering_daemon(tmp_path, dns_server, sink.port, dkim="rsa") as (d, setup):
            await enqueue(d, setup, ["bob@dest.test"])
            (first,) = await sink.wait_for(1)
            assert dkim.DKIM(first.data).verify(dnsfunc=dkim_dnsfunc(dns_server))
            (key,) = await d.store.domains.signing_keys(setup["domain"])
            new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            Path(key["key_path"]).write_bytes(new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                serialization.NoEncryption()))
            # What SIGHUP does to delivery (Daemon._reload; the test daemon has no config file to reread).
            await d.daemon.scheduler.reload(d.daemon.config)
            await enqueue(d, setup, ["carol@dest.test"])
            second = (await sink.wait_for(2))[1]
            record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public_bytes(new))
            assert dkim.DKIM(second.data).verify(dnsfunc=lambda name, timeout=5: record)
            assert not dkim.DKIM(second.data).verify(dnsfunc=dkim_dnsfunc(dns_server))   # not the old key
