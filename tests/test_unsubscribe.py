"""The pure parts of one-click unsubscribe: tokens (round trip, tamper, keys), the header fields, the
mailto: request parser and the pages' escaping."""

from __future__ import annotations

import base64
import random

import pytest

from gateway.unsubscribe import carries_fields, headers, mailto, pages, tokens
from gateway.unsubscribe.tokens import Claim, InvalidToken

KEYS = {1: b"\x01" * 32, 2: b"\x02" * 32}


def claim(**kw) -> Claim:
    base = dict(key_id=2, tenant_id=7, scope="usecase", scope_id=31, usecase_id=31, issued_at=1767225600, address="bob@dest.test")
    return Claim(**{**base, **kw})


def random_claim(rng: random.Random) -> Claim:
    local = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789.+-_'") for _ in range(rng.randint(1, 64)))
    return Claim(rng.choice([1, 2]), rng.randint(0, 2**40), rng.choice(tokens.SCOPES), rng.randint(0, 2**40), rng.randint(0, 2**40),
                 rng.randint(0, 2**34), f"{local}@{'d' * rng.randint(1, 60)}.test")


def test_round_trip_for_many_claims_and_tokens_are_url_safe():
    rng = random.Random(8058)
    for _ in range(500):
        c = random_claim(rng)
        token = tokens.mint(c, KEYS[c.key_id])
        assert tokens.verify(token, KEYS) == c
        assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_a_short_address_makes_a_compact_token():
    assert len(tokens.mint(claim(), KEYS[2])) < 70


def test_every_single_character_change_is_refused():
    token = tokens.mint(claim(), KEYS[2])
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = random.Random(2369)
    for i in range(len(token)):
        for ch in rng.sample(alphabet, 6):
            if ch == token[i]:
                continue
            with pytest.raises(InvalidToken):
                tokens.verify(token[:i] + ch + token[i + 1:], KEYS)
    for bad in (token[:-1], token + "A", token[1:], "", "x" * 600, token + "=", token[:5] + "+" + token[6:], "not a token"):
        with pytest.raises(InvalidToken):
            tokens.verify(bad, KEYS)


def test_an_altered_payload_with_the_old_tag_is_refused():
    raw = base64.urlsafe_b64decode(tokens.mint(claim(address="bob@dest.test"), KEYS[2]) + "==")
    forged = raw.replace(b"bob@", b"eve@")
    with pytest.raises(InvalidToken, match="bad signature"):
        tokens.verify(base64.urlsafe_b64encode(forged).rstrip(b"=").decode(), KEYS)


def test_keys_rotate_and_retire():
    old = tokens.mint(claim(key_id=1), KEYS[1])
    assert tokens.verify(old, KEYS).key_id == 1           # an older key still verifies
    with pytest.raises(InvalidToken, match="unknown or retired key id 1"):
        tokens.verify(old, {2: KEYS[2]})                   # ... until it is retired
    with pytest.raises(InvalidToken, match="bad signature"):
        tokens.verify(tokens.mint(claim(key_id=2), b"\x09" * 32), KEYS)  # the right id with another secret


def test_fields_fold_between_the_uris_and_replace_the_apps():
    token = tokens.mint(claim(), KEYS[2])
    fields = headers.fields(headers.unsubscribe_url("https://mail.example.com/", token),
                            headers.mailto_uri("unsubscribe@bounces.acme.test", token))
    assert fields == (f"List-Unsubscribe: <https://mail.example.com/u/{token}>,\r\n"
                      f" <mailto:unsubscribe@bounces.acme.test?subject=unsubscribe%20{token}>\r\n"
                      "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n").encode()
    app = (b"From: a@acme.test\r\nlist-unsubscribe: <mailto:app@acme.test>,\r\n\t<https://app.example/u>\r\n"
           b"List-Unsubscribe-Post : List-Unsubscribe=One-Click\r\nSubject: hi\r\n\r\nList-Unsubscribe: body text stays\r\n")
    out = headers.with_fields(app, fields)
    assert out == fields + b"From: a@acme.test\r\nSubject: hi\r\n\r\nList-Unsubscribe: body text stays\r\n"
    assert headers.without_fields(b"From: a@acme.test\r\nSubject: x\r\n\r\nbody") == b"From: a@acme.test\r\nSubject: x\r\n\r\nbody"
    with pytest.raises(ValueError):
        headers.fields("https://x.test/u/\u00e9", None)


def test_kind_decides_unless_the_use_case_says():
    assert carries_fields("marketing", None) and not carries_fields("transactional", None)
    assert carries_fields("transactional", 1) and not carries_fields("marketing", 0)


def test_mailto_requests_are_recognised_and_their_token_found():
    token = tokens.mint(claim(), KEYS[2])
    assert mailto.is_request_address("unsubscribe@bounces.acme.test", ["bounces.acme.test"])
    assert mailto.is_request_address("<Unsubscribe+x@BOUNCES.acme.test>", ["bounces.acme.test"])
    assert not mailto.is_request_address("bounces+abc.0@bounces.acme.test", ["bounces.acme.test"])
    assert not mailto.is_request_address("unsubscribe@other.test", ["bounces.acme.test"])
    assert mailto.token_in(f"unsubscribe {token}") == token
    assert mailto.token_in(f"Re: [External]  Unsubscribe\r\n {token}") == token   # prefixes and folding
    assert mailto.token_in("unsubscribe", f"unsubscribe+{token}@bounces.acme.test") == token
    assert mailto.token_in("please remove me") is None
    assert tokens.verify(mailto.token_in(f"unsubscribe {token}"), KEYS) == claim()


def test_pages_escape_everything_from_outside():
    info = {"tenant": "<script>alert(1)</script> & Co", "usecase": {"name": "n", "entity": '"><img src=x>', "domain": "a.test"},
            "domain": None, "suppression": None}
    html = pages.confirmation('tok"en', "a<b>@dest.test", info)
    assert "<script>" not in html and "<img" not in html and "a<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; Co" in html and 'action="tok&quot;en"' in html
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<script" not in pages.confirmation("t", "a@b.test", {**info, "suppression": {"reason": "unsubscribe"}})


def test_public_url_must_be_a_plain_http_url():
    from gateway.config import parse_config
    from gateway.errors import ConfigError

    assert parse_config({"web": {"public_url": "https://mail.example.com/gw"}}).web.public_url == "https://mail.example.com/gw"
    for bad in ("mail.example.com", "ftp://x.example", "https://x.example/?a=1", "https://x.example/#f", "https://x.example/ a"):
        with pytest.raises(ConfigError, match="web.public_url"):
            parse_config({"web": {"public_url": bad}})
