"""The bytes-operation relaxed canonicalisation (gateway/delivery/canonical.py) against dkimpy's.

The body form must be dkimpy's byte for byte for every input, not only for well-formed CRLF
bodies: runs of WSP of any length and mix, WSP before line ends and at the very end, empty lines
at the end, lone CR and LF, a CR before CRLF, NUL and VT. The header form likewise, except where
dkimpy strips more than RFC 6376's WSP (canonical.relaxed_header says which). And what we sign
with it verifies with dkimpy's verifier.
"""

from __future__ import annotations

import base64

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from dkim.canonicalization import Relaxed
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.delivery import canonical
from gateway.delivery.dkim import Signer, SigningKey

# Pieces that stress every step: WSP runs, line ends of every shape, text, and bytes near them.
PIECES = [b" ", b"  ", b"\t", b" \t ", b"\r\n", b"\r\n\r\n", b"\r", b"\n", b"\r\r\n", b"\n\r", b"x", b"word",
          b"\x00", b"\x0b", b"\x0c", b"\xe9", b"."]
pieces = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)
# Long runs (the halving loop) and many empty lines at the end (the trailing-lines loop).
runs = st.tuples(pieces, st.integers(0, 300), st.sampled_from([b" ", b"\t", b"\r\n", b" \r\n", b"\t\r\n"]), pieces).map(
    lambda t: t[0] + t[2] * t[1] + t[3])
bodies = st.one_of(pieces, runs, st.binary(max_size=200))
# Derandomized and no example database in the tree (as tests/fuzz/conftest.py's "ci" profile).
FIXED = dict(deadline=None, derandomize=True, database=None)


def theirs_body(body: bytes) -> bytes:
    return Relaxed.canonicalize_body(body)


@settings(max_examples=600, **FIXED)
@given(bodies)
@example(b"")
@example(b"\r\n")
@example(b"\r\n\r\n")
@example(b" \r\n \t\r\n")
@example(b"a  \t ")
@example(b"a\n\r\n")
@example(b"a\r\r\n\r\n")
@example(b"a" + b" " * 1025 + b"\r\n")
def test_relaxed_body_is_dkimpys(body):
    assert canonical.relaxed_body(body) == theirs_body(body)


def _dkimpy_strips_more(value: bytes) -> bool:
    ends = canonical.relaxed_header(b"x", value).partition(b":")[2]
    return ends[:1] in (b"\x0b", b"\x0c", b"\r") or ends[-1:] in (b"\x0b", b"\x0c", b"\r")


names = st.sampled_from([b"Subject", b"FROM", b"x-Custom", b"Content-Type", b"DKIM-Signature"])


@settings(max_examples=400, **FIXED)
@given(names, st.sampled_from([b"", b" ", b"\t"]), st.one_of(pieces, runs))
@example(b"Subject", b"", b"  a \t b  \r\n\tc ")
@example(b"Subject", b" ", b"\r\n folded\r\n")
def test_relaxed_header_is_dkimpys(name, space, value):
    if _dkimpy_strips_more(value):
        return   # RFC 6376 strips WSP only, dkimpy all of bytes.strip()'s set (canonical.relaxed_header)
    (their_name, their_value), = Relaxed.canonicalize_headers([(name + space, value + b"\r\n")])
    assert canonical.relaxed_header(name + space, value) == their_name + b":" + their_value[:-2]


def test_dkimpy_strips_more_only_at_the_ends():
    """The one documented difference: a VT at the end stays with us (not WSP), goes with dkimpy."""
    assert canonical.relaxed_header(b"Subject", b" a\x0b") == b"subject:a\x0b"
    assert canonical.relaxed_header(b"Subject", b" a\x0b b") == b"subject:a\x0b b"


@pytest.fixture(scope="module")
def ed_key():
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(public)
    return SigningKey("example.com", "c1", "ed25519", pem), lambda name, timeout=5: record


crlf_bodies = st.lists(st.sampled_from([b" ", b"  ", b"\t", b"x", b"two words", b"\r\n", b"\r\n\r\n", b" \r\n"]),
                       max_size=30).map(b"".join)


@settings(max_examples=60, **FIXED)
@given(crlf_bodies, st.sampled_from([b"hi", b"  spaced \t subject  ", b"folded\r\n\tsubject"]))
def test_signed_message_verifies_with_dkimpy(ed_key, body, subject):
    key, dnsfunc = ed_key
    message = (b"From: Shop <news@example.com>\r\nTo: a@example.org\r\nSubject: " + subject +
               b"\r\nMessage-ID: <1@example.com>\r\n\r\n" + body)
    signed = Signer().sign(message, [key], now=1_700_000_000)
    assert dkim.DKIM(signed).verify(dnsfunc=dnsfunc), signed
