"""Coverage-guided long pass (atheris, libFuzzer) over the pure parsers, with the checks of properties.py.

    .venv/bin/python -m tests.fuzz.parsers_atheris -atheris_runs=1000000 -seed=12     (scripts/fuzz --parsers N)

The first byte of each input picks a target, the rest is its input (split into fields where the
target takes several). A failed check or an unexpected exception stops the run with the input
written as crash-<sha1> (libFuzzer's way); put the shrunk input into a regular test.
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["gateway"]):
    from gateway.delivery import dkim as ours
    from gateway.delivery.dsn import FailedRecipient
    from tests.fuzz import properties as p


def _signing() -> tuple:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    path = Path(tempfile.mkdtemp(prefix="gateway-fuzz-keys-")) / "ed.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(pub)
    return ours.Signer(), ours.SigningKey("example.com", "ed", "ed25519", path.read_text()), (lambda name, timeout=5: record)


SIGNER, KEY, DNS = _signing()


def _text(fdp: atheris.FuzzedDataProvider, n: int = 200) -> str:
    return fdp.ConsumeUnicodeNoSurrogates(n) if fdp.ConsumeBool() else fdp.ConsumeUnicode(n)


def _crlf(data: bytes) -> bytes:
    return ours.to_crlf(data)


def _field_name(f: atheris.FuzzedDataProvider) -> bytes:
    """A header name as a header line can carry one: ftext (printable ASCII but ':'), maybe WSP before the colon."""
    name = bytes(b for b in f.ConsumeBytes(12) if 0x21 <= b <= 0x7e and b != 0x3a) or b"x"
    return name + (b" \t"[: f.ConsumeIntInRange(0, 2)])


def _field_value(f: atheris.FuzzedDataProvider) -> bytes:
    """A value as it stands in a header: folded lines (CRLF + WSP) only."""
    return f.ConsumeBytes(200).replace(b"\r", b"").replace(b"\n", b"\r\n ")


TARGETS = [
    lambda f: p.check_mailbox(_text(f)),
    lambda f: p.check_command_argument(_text(f)),
    lambda f: p.check_line_endings(f.ConsumeBytes(400)),
    lambda f: p.check_split_header(f.ConsumeBytes(2000), f.ConsumeIntInRange(16, 4096)),
    lambda f: p.check_inspect(f.ConsumeBytes(3000)),
    lambda f: p.check_safe_helo(_text(f)),
    lambda f: p.check_relaxed_header(_field_name(f), _field_value(f)),
    lambda f: p.check_relaxed_body(_crlf(f.ConsumeBytes(600))),
    lambda f: p.check_split_message(f.ConsumeBytes(1000)),
    lambda f: p.check_signature_verifies(SIGNER, KEY, DNS, b"From: a@example.com\r\n" + f.ConsumeBytes(800)),
    lambda f: p.check_verp_round_trip(_text(f, 30), _text(f, 40), _text(f, 20), f.ConsumeIntInRange(0, 10**12)),
    lambda f: p.check_verp_decode(_text(f)),
    lambda f: p.check_domain(_text(f, 300)),
    lambda f: p.check_address(_text(f, 300)),
    lambda f: p.check_dsn(f.ConsumeBytes(500), _text(f, 80), [FailedRecipient(_text(f, 80), "5.1.1", _text(f, 2000), _text(f, 40), f.ConsumeBool())]),
    lambda f: p.check_reply_parsing(f.ConsumeBytes(600), [f.ConsumeIntInRange(0, 600) for _ in range(f.ConsumeIntInRange(0, 5))]),
    lambda f: p.check_split_enhanced(_text(f)),
    lambda f: p.check_format_data(f.ConsumeBytes(600)),
]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
