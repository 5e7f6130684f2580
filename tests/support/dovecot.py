"""A real Dovecot (IMAP and POP3) for tests, started in a temp dir on free loopback ports.

    with Dovecot(users={"alice": "pw"}) as dc:     # or the `dovecot` pytest fixture
        dc.imap_port, dc.imaps_port, dc.pop3_port, dc.pop3s_port
        dc.append("alice", raw_bytes, folder="INBOX")       # IMAP APPEND as the user
        dc.deliver("alice", [raw, raw2])                     # drop files into the maildir (fast, many)
        dc.messages("alice", "INBOX")                        # {uid: (flags, bytes)} as the server sees it
        dc.create("alice", "Done")                           # a folder
        dc.set_uidvalidity("alice", "INBOX", 7)              # the mailbox "recreated": new UIDVALIDITY
        dc.restart()                                         # stop and start on the same ports
        dc.cert_path                                         # the self-signed certificate it serves

Its own configuration (nothing under /etc is read), passwd-file authentication with plain
passwords, one maildir per user under the temp dir, TLS with a certificate generated per instance
(STARTTLS on the plain ports, implicit TLS on imaps/pop3s). Plaintext logins are allowed without TLS
so the `tls none` path can be tested. As root (CI) the mail user is the `nobody` account with a
mail tree it owns; as anyone else every process runs as that user.
"""

from __future__ import annotations

import contextlib
import datetime
import imaplib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
START_TIMEOUT = 10.0


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (bound and released together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _certificate(directory: Path, name: str = "imap.test") -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "key.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return directory / "cert.pem"


class Dovecot:
    """See the module docstring."""

    def __init__(self, users: dict[str, str] | None = None):
        # pytest's tmp_path sits under a 0700 directory the mail user (nobody, as root) cannot
        # enter, so the server gets its own world-traversable temp dir.
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.root.chmod(0o755)
        self.users = dict(users or {"alice": "alice-pw"})
        self.imap_port, self.imaps_port, self.pop3_port, self.pop3s_port = free_ports(4)
        self.host = "127.0.0.1"
        self.config = self.root / "dovecot.conf"
        self.log = self.root / "dovecot.log"
        self.cert_path = _certificate(self.root)
        self._running = False
        if os.geteuid() == 0:
            account = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid, internal = account.pw_uid, account.pw_gid, "dovenull"
            try:
                pwd.getpwnam(internal)
            except KeyError:
                internal = "nobody"
        else:
            self.mail_uid, self.mail_gid = os.getuid(), os.getgid()
            internal = pwd.getpwuid(os.getuid()).pw_name
        self._internal = internal
        self.home = self.root / "home"
        self.home.mkdir()
        os.chown(self.home, self.mail_uid, self.mail_gid)
        self._write_config()

    # ------------------------------------------------------------------ setup

    def _write_config(self) -> None:
        passwd = self.root / "passwd"
        passwd.write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in self.users.items()))
        run = self.root / "run"
        self.config.write_text(f"""\
base_dir = {run}
state_dir = {self.root}/state
log_path = {self.log}
instance_name = dovecot-test-{self.imap_port}
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{self.root}/cert.pem
ssl_key = <{self.root}/key.pem
disable_plaintext_auth = no
auth_mechanisms = plain login
default_internal_user = {self._internal}
default_login_user = {self._internal}
first_valid_uid = {min(self.mail_uid, 500)}
mail_location = maildir:~/Maildir
mail_plugins =
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = static
  args = uid={self.mail_uid} gid={self.mail_gid} home={self.home}/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = {self.imaps_port}
    ssl = yes
  }}
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
service auth-worker {{
  user = {"$default_internal_user" if os.geteuid() else "root"}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0666
  }}
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
""")

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "Dovecot":
        # The master forks into the background; its children would hold a pipe open, so its startup
        # errors go to a file.
        errors = self.root / "start.err"
        with errors.open("wb") as err:
            code = subprocess.call([DOVECOT, "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=err, stderr=err, timeout=30)
        if code != 0:
            raise RuntimeError(f"dovecot did not start: {errors.read_text().strip()} {self._log_tail()}")
        self._running = True
        deadline = time.monotonic() + START_TIMEOUT
        for port in (self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port):
            while True:
                try:
                    socket.create_connection((self.host, port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"dovecot is not listening on {port}: {self._log_tail()}") from None
                    time.sleep(0.02)
        return self

    def _master_pid(self) -> int | None:
        try:
            return int((self.root / "run" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        if not self._running:
            return
        pid = self._master_pid()
        self._running = False
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.02)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The ports must be free again before a restart binds them.
        for port in (self.imap_port, self.pop3_port, self.imaps_port, self.pop3s_port):
            while time.monotonic() < deadline:
                try:
                    socket.create_connection((self.host, port), timeout=0.2).close()
                except OSError:
                    break
                time.sleep(0.02)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "Dovecot":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _log_tail(self) -> str:
        try:
            return self.log.read_text()[-2000:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ the mailboxes

    @contextlib.contextmanager
    def session(self, user: str) -> imaplib.IMAP4:
        """A stdlib IMAP session as the user (the tests' own view of the server)."""
        conn = imaplib.IMAP4(self.host, self.imap_port, timeout=10)
        try:
            conn.login(user, self.users[user])
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.logout()

    def append(self, user: str, raw: bytes, folder: str = "INBOX", flags: str = "") -> None:
        with self.session(user) as conn:
            typ, data = conn.append(folder, f"({flags})" if flags else None, None, raw)
            assert typ == "OK", data

    def create(self, user: str, folder: str) -> None:
        with self.session(user) as conn:
            typ, data = conn.create(folder)
            assert typ == "OK", data

    def messages(self, user: str, folder: str = "INBOX") -> dict[int, tuple[set[str], bytes]]:
        """Every message of the folder: uid -> (flags, body), without changing a flag."""
        with self.session(user) as conn:
            typ, data = conn.select(folder, readonly=True)
            assert typ == "OK", data
            if int(data[0]) == 0:
                return {}
            typ, data = conn.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
            assert typ == "OK", data
            out: dict[int, tuple[set[str], bytes]] = {}
            for item in data:
                if isinstance(item, tuple):
                    meta = item[0].decode()
                    uid = int(re.search(r"UID (\d+)", meta).group(1))
                    flags = set(re.search(r"FLAGS \(([^)]*)\)", meta).group(1).split())
                    out[uid] = (flags, item[1])
            return out

    def deliver(self, user: str, raws: list[bytes], folder: str = "INBOX") -> None:
        """Write messages straight into the user's maildir (as a delivery agent does): fast for many."""
        base = self.home / user / "Maildir"
        if folder != "INBOX":
            base = base / f".{folder}"
        for sub in ("tmp", "new", "cur"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        stamp = int(time.time())
        for i, raw in enumerate(raws):
            name = f"{stamp}.M{i}P{os.getpid()}.{time.monotonic_ns()}.test"
            tmp = base / "tmp" / name
            tmp.write_bytes(raw.replace(b"\r\n", b"\n"))
            os.chown(tmp, self.mail_uid, self.mail_gid)
            tmp.rename(base / "new" / name)
        for path in [self.home / user, *(p for p in (self.home / user).rglob("*"))]:
            with contextlib.suppress(FileNotFoundError):
                os.chown(path, self.mail_uid, self.mail_gid)

    def set_uidvalidity(self, user: str, folder: str, value: int) -> None:
        """Give the folder a new UIDVALIDITY, as when a mailbox is recreated or restored from backup:
        every message gets a new UID."""
        proc = subprocess.run([DOVEADM, "-c", str(self.config), "mailbox", "update", "-u", user, "--uid-validity",
                               str(value), folder], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise RuntimeError(f"doveadm mailbox update failed: {proc.stderr.strip()}")

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's certificate."""
        ctx = ssl.create_default_context(cafile=str(self.cert_path))
        ctx.check_hostname = False
        return ctx


@pytest.fixture
def dovecot():
    """A running Dovecot with users alice and bob (see the module docstring)."""
    with Dovecot(users={"alice": "alice-pw", "bob": "bob-pw"}) as server:
        yield server
