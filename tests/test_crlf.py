"""The one definition of line-breaking characters and CRLF form (gateway/crlf.py)."""

import pytest

from gateway.crlf import has_line_breakers, only_crlf, to_crlf


@pytest.mark.parametrize("value", ["a\rb", "a\nb", "a\0b", b"a\rb", b"a\nb", b"a\0b"])
def test_line_breakers_found_in_text_and_bytes(value):
    assert has_line_breakers(value)


@pytest.mark.parametrize("value", ["plain", "tab\tand space", b"plain", "", b""])
def test_no_line_breakers(value):
    assert not has_line_breakers(value)


@pytest.mark.parametrize("data, crlf", [
    (b"a\r\nb\r\n", True), (b"", True), (b"a\nb", False), (b"a\rb", False), (b"a\r\r\nb", False), (b"a\r\n\nb", False),
])
def test_only_crlf(data, crlf):
    assert only_crlf(data) is crlf


def test_to_crlf_normalises_every_ending_and_keeps_crlf_data_as_is():
    assert to_crlf(b"a\nb\rc\r\nd") == b"a\r\nb\r\nc\r\nd"
    data = b"a\r\nb\r\n"
    assert to_crlf(data) is data
    assert only_crlf(to_crlf(b"x\r\r\n\n\ry"))
