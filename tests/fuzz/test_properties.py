"""Property-based tests (hypothesis) over the pure parsers and policy functions; see properties.py."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from gateway.delivery import dkim as ours
from gateway.delivery.dsn import FailedRecipient
from tests.fuzz import properties as p

# --------------------------------------------------------------------------- building blocks

ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+/=?^_`{|}~-"
LDH = "abcdefghijklmnopqrstuvwxyz0123456789-"
SPECIALS = "<>@\"\\[]():;, .\r\n\x00\t\x7f\u00e9\u4e2d\udcff"

atom = st.text(ATEXT, min_size=1, max_size=12)
dot_atom = st.lists(atom, min_size=1, max_size=4).map(".".join)
label = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=8) | st.builds(
    lambda a, m, b: a + m + b, st.sampled_from("abc1"), st.text(LDH, max_size=6), st.sampled_from("xyz9"))
domain = st.lists(label, min_size=2, max_size=4).map(".".join)
valid_mailbox = st.builds(lambda l, d: f"{l}@{d}", dot_atom, domain)
# Near-misses: pieces of valid addresses with hostile characters in between.
address_soup = st.lists(st.one_of(atom, domain, st.sampled_from(["@", ".", "<", ">", '"', "\\", "[", "]"]),
                                  st.text(SPECIALS, min_size=1, max_size=3)), max_size=12).map("".join)
any_text = st.text(max_size=80)

header_name = st.one_of(
    st.sampled_from([n.title() for n in ours.SIGNED_HEADERS] + ["Received", "Bcc", "X-Mailer", "References", "In-Reply-To"]),
    st.text("abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#", min_size=1, max_size=10),
)
value_bytes = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
value_text = st.lists(st.one_of(st.sampled_from([b" ", b"\t", b"  \t ", b"<a@b>", b"<\xc3(@x>", b"x@y.z", b",", b"\xff"]),
                                st.text(ATEXT, max_size=8).map(str.encode)), max_size=8).map(b"".join)
folded_value = st.lists(st.one_of(value_text, value_bytes), min_size=1, max_size=3).map(
    lambda parts: b"\r\n ".join(parts))
header_line = st.builds(lambda n, sp, v: n.encode() + sp + b":" + v + b"\r\n", header_name, st.sampled_from([b"", b"", b" ", b"\t"]), folded_value)
body_line = st.lists(st.one_of(st.sampled_from([b" ", b"\t", b"  ", b".", b"..", b"x", b"\xe9"]), st.text(ATEXT, max_size=10).map(str.encode)),
                     max_size=6).map(b"".join)
body = st.lists(body_line, max_size=8).map(lambda lines: b"".join(line + b"\r\n" for line in lines)) | st.lists(body_line, max_size=4).map(b"\r\n".join)
message = st.builds(lambda hs, sep, b: b"".join(hs) + sep + b, st.lists(header_line, max_size=10),
                    st.sampled_from([b"\r\n", b"\r\n", b"", b"junk line\r\n"]), body)


# --------------------------------------------------------------------------- submission policy


@given(st.one_of(address_soup, any_text, valid_mailbox))
def test_mailbox_grammar_raises_only_smtp_errors(address):
    p.check_mailbox(address)


@given(valid_mailbox)
def test_valid_mailboxes_are_accepted(address):
    if len(address) <= 254 and len(address.rpartition("@")[0]) <= 64:
        p.check_valid_mailbox(address)


@given(st.one_of(any_text, address_soup))
def test_command_argument_check(arg):
    p.check_command_argument(arg)


@given(st.one_of(st.binary(max_size=60), message))
def test_line_endings_check(data):
    p.check_line_endings(data)


# --------------------------------------------------------------------------- submission headers


@given(st.one_of(message, st.binary(max_size=200)), st.integers(16, 400))
def test_split_header_round_trips(data, limit):
    p.check_split_header(data, limit)


@given(st.one_of(message, st.binary(max_size=200)))
def test_inspect_and_prepare(data):
    p.check_inspect(data)


@given(st.builds(lambda name, ident, rest: name + b": " + ident + b"\r\n" + rest,
                 st.sampled_from([b"Message-ID", b"In-Reply-To", b"References"]),
                 st.sampled_from([b"<\xc3(@x>", b"<a@b> <\xff@c>", b"<ok@x>"]), message))
@settings(max_examples=30)
def test_identifiers_reach_the_store_as_utf8(data):
    p.check_identifiers_storable(data)


@given(any_text)
def test_safe_helo(helo):
    p.check_safe_helo(helo)


# --------------------------------------------------------------------------- DKIM


@given(st.text("abcdefghijklmnopqrstuvwxyz-ABCXYZ0123", min_size=1, max_size=10).map(str.encode), st.sampled_from([b"", b" ", b"\t "]),
       folded_value)
def test_relaxed_header_matches_dkimpy(name, space, value):
    p.check_relaxed_header(name + space, value)


@given(body)
def test_relaxed_body_matches_dkimpy(data):
    p.check_relaxed_body(data)


@given(message)
def test_split_message_matches_dkimpy(data):
    p.check_split_message(data)


@pytest.fixture(scope="module")
def signing(tmp_path_factory):
    d = tmp_path_factory.mktemp("fuzzkeys")
    out = {}
    records = {}
    for algorithm, key in (("ed25519", ed25519.Ed25519PrivateKey.generate()),
                           ("rsa", rsa.generate_private_key(public_exponent=65537, key_size=1024))):
        path = d / f"{algorithm}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        if algorithm == "rsa":
            pub = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        else:
            pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        records[f"{algorithm}._domainkey.example.com.".encode()] = f"v=DKIM1; k={algorithm}; p=".encode() + base64.b64encode(pub)
        out[algorithm] = ours.SigningKey("example.com", algorithm, algorithm, path.read_text())
    return ours.Signer(), out, (lambda name, timeout=5: records.get(name))


@given(message, st.sampled_from(["ed25519", "rsa"]))
@settings(max_examples=150)
def test_our_signature_verifies_with_dkimpy(signing, data, algorithm):
    signer, keys, dnsfunc = signing
    p.check_signature_verifies(signer, keys[algorithm], dnsfunc, b"From: a@example.com\r\n" + data)


# --------------------------------------------------------------------------- VERP, domain names


queue_id = st.text("0123456789abcdefghjkmnpqrstvwxyz", min_size=16, max_size=16)


@given(dot_atom, domain, st.one_of(queue_id, queue_id.map(str.upper), st.text(max_size=20)), st.integers(0, 10**11))
def test_verp_round_trip(local, dom, qid, index):
    p.check_verp_round_trip(local, dom, qid, index)


@given(st.one_of(any_text, address_soup, st.builds(lambda q, i: f"bounces+{q}.{i}@x.example", queue_id, st.integers(0, 10**12))))
def test_verp_decode_never_raises(address):
    p.check_verp_decode(address)


@given(st.one_of(domain, any_text, address_soup, st.lists(st.text(min_size=0, max_size=70), max_size=5).map(".".join)))
def test_domain_normalisation(raw):
    p.check_domain(raw)


@given(st.one_of(valid_mailbox, address_soup, any_text))
def test_address_normalisation(raw):
    p.check_address(raw)


# --------------------------------------------------------------------------- DSN, SMTP client


failed = st.builds(FailedRecipient, rcpt=st.one_of(valid_mailbox, any_text), status=st.sampled_from(["5.1.1", "4.4.7", "5.0.0"]),
                   diagnostic=st.one_of(any_text, st.builds(lambda t, n: t * n, st.text(min_size=1, max_size=4), st.integers(100, 1000))), remote=any_text, expired=st.booleans())


@given(st.one_of(message, st.binary(max_size=200)), st.one_of(valid_mailbox, any_text), st.lists(failed, min_size=1, max_size=4))
def test_dsn_is_well_formed(original, envelope_from, recipients):
    p.check_dsn(original, envelope_from, recipients)


reply_line = st.one_of(
    st.builds(lambda c, s, t: c + s + t, st.sampled_from([b"250", b"550", b"421", b"354", b"2x0", b"25", b"9999"]),
              st.sampled_from([b" ", b"-", b"", b"x"]), st.binary(max_size=30)),
    st.binary(max_size=20),
)
replies = st.lists(st.builds(lambda line, end: line + end, reply_line, st.sampled_from([b"\r\n", b"\n", b"\r", b""])), max_size=10).map(b"".join)


@given(replies, st.lists(st.integers(0, 400), max_size=6))
def test_reply_parsing_is_chunking_independent(data, cuts):
    p.check_reply_parsing(data, cuts)


@given(st.one_of(any_text, st.builds(lambda e, t: f"{e} {t}", st.sampled_from(["5.1.1", "4.7.0", "2.0.0", "5.1234.1", "6.1.1"]), any_text)))
def test_split_enhanced(text):
    p.check_split_enhanced(text)


@given(st.one_of(body, st.binary(max_size=80)))
def test_format_data_unstuffs_to_the_message(data):
    p.check_format_data(data)
