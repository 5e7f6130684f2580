"""TLS for the submission listeners: the certificate from config, or a self-signed one, hot-reloaded.

Both listeners (STARTTLS and implicit TLS) share one ``ssl.SSLContext``. On SIGHUP the new pair is
first loaded into a scratch context (so a bad file or a key that does not match its certificate
changes nothing), then into the live context: handshakes from then on use it, sessions already
established keep theirs.

With no certificate configured, a self-signed ECDSA P-256 pair for ``daemon.hostname`` is generated
once in <state dir>/tls (key mode 0600) and reused; a warning says clients will not verify it.
"""

from __future__ import annotations

import datetime
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .. import logs
from ..errors import StartupError

log = logs.get_logger("submission")   # assembled once per configuration (logs.py)

SELF_SIGNED_CERT = "selfsigned.crt"
SELF_SIGNED_KEY = "selfsigned.key"
SELF_SIGNED_DAYS = 3650
RENEW_BEFORE = datetime.timedelta(days=30)


def _write_private(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _still_good(cert_path: Path, hostname: str) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.timezone.utc)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return cert.not_valid_after_utc - RENEW_BEFORE > now and bool(names) and names[0].value == hostname


def ensure_self_signed(tls_dir: Path, hostname: str) -> tuple[Path, Path]:
    """The self-signed pair in ``tls_dir``, generated when missing, expiring or for another name."""
    cert_path, key_path = tls_dir / SELF_SIGNED_CERT, tls_dir / SELF_SIGNED_KEY
    if key_path.exists() and _still_good(cert_path, hostname):
        return cert_path, key_path
    try:
        tls_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create TLS directory {tls_dir}: {exc.strerror}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    _write_private(key_path, key_pem, 0o600)
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.warning("tls_self_signed_generated", cert=str(cert_path), hostname=hostname,
                hint="clients cannot verify this certificate; set submission.tls_cert and submission.tls_key")
    return cert_path, key_path


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def _check_pair(cert: Path, key: Path) -> None:
    """Raise StartupError naming the problem when the pair cannot be loaded."""
    for label, path in (("certificate", cert), ("key", key)):
        if not path.is_file():
            raise StartupError(f"submission: TLS {label} {path} does not exist")
        if not os.access(path, os.R_OK):
            raise StartupError(f"submission: TLS {label} {path} is not readable")
    try:
        _new_context().load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise StartupError(f"submission: cannot load TLS certificate {cert} with key {key}: {exc.reason or exc}") from None
    except OSError as exc:
        raise StartupError(f"submission: cannot read TLS files {cert}, {key}: {exc.strerror}") from None


class TlsContext:
    """The listeners' shared server context and where its certificate comes from."""

    def __init__(self, cert: str, key: str, *, tls_dir: Path, hostname: str):
        self.tls_dir = tls_dir
        self.hostname = hostname
        self._configured = (cert, key)
        self.context = _new_context()
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        self.self_signed = False

    def _paths(self, cert: str, key: str) -> tuple[Path, Path, bool]:
        if bool(cert) != bool(key):
            raise StartupError("submission: set both tls_cert and tls_key, or neither (for a self-signed pair)")
        if cert:
            return Path(cert), Path(key), False
        cert_path, key_path = ensure_self_signed(self.tls_dir, self.hostname)
        return cert_path, key_path, True

    def load(self) -> None:
        """At start: StartupError (one line) when the configured files are missing or unusable."""
        cert, key, self_signed = self._paths(*self._configured)
        _check_pair(cert, key)
        self.context.load_cert_chain(cert, key)
        self.cert_path, self.key_path, self.self_signed = cert, key, self_signed

    def reload(self, cert: str, key: str) -> bool:
        """On SIGHUP: load the (possibly new) pair; on any problem log it and keep the old one."""
        try:
            cert_path, key_path, self_signed = self._paths(cert, key)
            _check_pair(cert_path, key_path)
            self.context.load_cert_chain(cert_path, key_path)
        except StartupError as exc:
            log.error("tls_reload_refused", reason=str(exc))
            return False
        self._configured = (cert, key)
        self.cert_path, self.key_path, self.self_signed = cert_path, key_path, self_signed
        log.info("tls_reloaded", cert=str(cert_path), self_signed=self_signed)
        return True
