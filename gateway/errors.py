"""The gateway's one error tree.

    GatewayError                  base of everything we raise on purpose
    ├── ConfigError               configuration file or value is wrong (CLI exit 2, unit RestartPreventExitStatus=2)
    ├── StartupError              the daemon cannot start: port in use, state dir unwritable, TLS file missing (exit 1)
    ├── StoreError                the database refused (corrupt, locked by another daemon, migration failed)
    │   └── StorageFull           no room to write: the disk is full (SQLITE_FULL, ENOSPC) or below store.min_free_bytes
    ├── ServiceError              a service function refused a request; carries an admin-protocol ``code``
    │   ├── InvalidArgument       the caller's value is malformed (exit 2)          code "invalid"
    │   │   └── ParamsError       admin/registry.py: params do not fit the method     code "invalid_params"
    │   ├── NotFound              the named thing does not exist (exit 1)           code "not_found"
    │   └── Conflict              the request clashes with existing state (exit 1)  code "conflict"
    ├── SMTPError                 an SMTP-facing refusal: code, enhanced code, public text, private reason
    ├── DeliveryError             an outbound step failed; the delivery code decides temporary or permanent
    │   ├── SMTPClientError       delivery/smtpclient.py: the connection is unusable (lost, timed out, garbled)
    │   │   ├── SMTPDisconnected  also a ConnectionError
    │   │   ├── SMTPTimeout       also a TimeoutError
    │   │   ├── SMTPProtocolError
    │   │   └── SMTPReplyError    a session step got a reply other than the one it needs
    │   ├── SessionError          delivery/courier.py: no usable session; its ``reply`` is always temporary
    │   ├── DestinationError      delivery/mx.py: the domain cannot be delivered to now or ever (``reply`` says)
    │   ├── SigningError          delivery/dkim.py: a key cannot be loaded or used; the message is held
    │   ├── PayloadRefused        delivery/connectors.py: past a bound of the SendGrid mapping (permanent reply)
    │   ├── RoutingProblem        delivery: the use case cannot be routed (no or disabled connector); held
    │   └── RefusedAddress        remotes.py: a webhook or SendGrid host resolves only to refused addresses (also an OSError)
    ├── RecordError               a published DNS record cannot be evaluated; verification reports it as a status
    │   ├── PermError             domains/spf.py: the SPF policy is broken for every receiver
    │   └── TempError             domains/spf.py: DNS did not answer, we cannot tell
    ├── MailboxError              inbound/mailbox.py: a polled mailbox's session failed (connect, TLS, login, a command)
    │   └── MailboxAuthError      the server refused the login; the poller backs off
    ├── Unroutable                inbound/processor.py: no recipient of a spooled message receives here any more; held
    ├── ParserDied                inbound/pool.py: the parser process ended without an answer; the row is retried, held after 3
    ├── ParserFailed              inbound/pool.py: the parse raised in the parser process (its text, the exception not picklable)
    ├── InvalidToken              tokens.py: a link's token (unsubscribe, attachment URL) is malformed, forged or names nothing
    ├── ApiProblem                api/problems.py: an HTTP API refusal; carries its RFC 9457 problem body and status
    └── AdminClientError          the CLI's side of the admin socket (admin/client.py)
        ├── AdminError            the daemon refused a call; ``code`` is the protocol's (exit 2 for usage codes)
        └── DaemonNotRunning      nothing answers at the socket (exit 1)

Outside the tree, on purpose: control flow inside one component, a BaseException so that no
``except Exception`` of the code it passes through takes it for an error of its own; it never leaves
that component.

    BaseException
    └── PipelineFailed            store/pgconn.py: a statement of a pipelined batch failed; the writer runs the batch again

Subclasses live beside the code that raises them; this drawing names each one, and
tests/test_errors.py checks that every exception class in the package is in the tree (or, a
BaseException that is no Exception, drawn above).

Rules: lower-library exceptions are translated once, at the boundary that calls the library, with
``raise ... from exc``. Clients (SMTP peers, admin-socket callers) see only the public text; the private
reason goes to the log.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """The configuration is wrong. ``problems`` lists one line per problem."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class StartupError(GatewayError):
    """The daemon cannot start; the message is one line naming the problem."""


class StoreError(GatewayError):
    """The store cannot be opened or used."""


class StorageFull(StoreError):
    """A write found no room: the state directory's filesystem is full, or its free space is below the
    reserve (``store.min_free_bytes``) and the write was new mail. Temporary: once space returns the
    same write succeeds, so callers answer "try later" (SMTP 452 4.3.1), never "failed for good"."""


class ServiceError(GatewayError):
    """A service function refused a request. ``code`` travels over the admin socket."""

    code = "error"
    exit_code = 1

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class InvalidArgument(ServiceError):
    code = "invalid"
    exit_code = 2


class NotFound(ServiceError):
    code = "not_found"


class Conflict(ServiceError):
    code = "conflict"


class SMTPError(GatewayError):
    """An SMTP refusal. ``public`` goes to the client, ``reason`` only to the log."""

    def __init__(self, code: int, enhanced: str, public: str, reason: str | None = None):
        self.code = code
        self.enhanced = enhanced
        self.public = public
        self.reason = reason or public
        super().__init__(f"{code} {enhanced} {public} ({self.reason})")

    @property
    def reply(self) -> str:
        """The reply line as sent to the client."""
        return f"{self.code} {self.enhanced} {self.public}"

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class DeliveryError(GatewayError):
    """An outbound step (connect, session, route, sign) failed; the caller decides what the reply means."""


class RecordError(GatewayError):
    """A published DNS record cannot be evaluated (SPF permerror or temperror)."""


class AdminClientError(GatewayError):
    """The CLI could not get an answer from the daemon, or the daemon refused the call."""
