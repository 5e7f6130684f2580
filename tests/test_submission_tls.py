"""TLS on the submission listeners: configured pair, self-signed fallback, SIGHUP reload, bad files."""

from __future__ import annotations

import asyncio
import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Config, SubmissionConfig
from gateway.errors import StartupError
from gateway.submission import client_tls_context
from gateway.submission.tls import TlsContext, ensure_self_signed
from tests.support.submission import submission_listener


def write_pair(directory, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(cert_path), str(key_path)


async def served_name(port: int) -> str:
    """The CN of the certificate the implicit-TLS port presents."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls_context())
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    await reader.readline()
    writer.close()
    try:
        await writer.wait_closed()
    except (ConnectionError, ssl.SSLError):
        pass
    cert = x509.load_der_x509_certificate(der)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


async def test_configured_certificate_is_served_and_reloaded(tmp_path):
    one = write_pair(tmp_path, "one.example")
    two = write_pair(tmp_path, "two.example")
    async with submission_listener(tmp_path, submission={"tls_cert": one[0], "tls_key": one[1]}) as sub:
        port = sub.port("submissions")
        assert await served_name(port) == "one.example"
        # SIGHUP with a broken pair: refused, the old one stays.
        new = Config(submission=SubmissionConfig(listen="127.0.0.1:0", listen_tls="127.0.0.1:0", tls_cert=two[0], tls_key=one[1]))
        await sub.server.reload(new)
        assert await served_name(port) == "one.example"
        new = Config(submission=SubmissionConfig(listen="127.0.0.1:0", listen_tls="127.0.0.1:0", tls_cert=two[0], tls_key=two[1]))
        await sub.server.reload(new)
        assert await served_name(port) == "two.example"
        # STARTTLS uses the same context.
        async with sub.client() as smtp:
            assert smtp.get_transport_info("ssl_object").getpeercert(binary_form=True)


async def test_self_signed_pair_generated_once_and_reused(tmp_path):
    async with submission_listener(tmp_path) as sub:
        assert sub.server.tls.self_signed
        key = tmp_path / "tls" / "selfsigned.key"
        assert key.stat().st_mode & 0o777 == 0o600
        first = (tmp_path / "tls" / "selfsigned.crt").read_bytes()
        assert await served_name(sub.port("submissions")) == "localhost"
    cert_path, _ = ensure_self_signed(tmp_path / "tls", "localhost")
    assert cert_path.read_bytes() == first
    cert_path, _ = ensure_self_signed(tmp_path / "tls", "mail.example")  # the hostname changed: a new one
    assert cert_path.read_bytes() != first


def test_missing_or_half_configured_tls_is_one_line_startup_error(tmp_path):
    tls = TlsContext(str(tmp_path / "nope.crt"), str(tmp_path / "nope.key"), tls_dir=tmp_path, hostname="localhost")
    with pytest.raises(StartupError, match=r"^submission: TLS certificate .*nope.crt does not exist$"):
        tls.load()
    tls = TlsContext(str(tmp_path / "x.crt"), "", tls_dir=tmp_path, hostname="localhost")
    with pytest.raises(StartupError, match="set both tls_cert and tls_key"):
        tls.load()
    cert, key = write_pair(tmp_path, "a.example")
    other_cert, _ = write_pair(tmp_path, "b.example")
    tls = TlsContext(other_cert, key, tls_dir=tmp_path, hostname="localhost")
    with pytest.raises(StartupError, match="cannot load TLS certificate"):
        tls.load()
