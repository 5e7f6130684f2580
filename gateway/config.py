"""Configuration: TOML parsed into frozen, typed values, with every default in this file.

Each section is a frozen dataclass; a field's ``metadata`` carries its documentation and its
constraints (``doc``, ``choices``, ``min``, ``max``, ``kind``, ``secret``, and ``restart`` for keys
that a SIGHUP cannot apply because they were used to bind or open something). The parser walks the
dataclasses, so adding a key is adding a field: the validator, ``gateway config show`` and
``gateway config example`` (which writes ``config.example.toml``) all follow.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .node import NODE_ID
from .numbers import ascii_number

MASK = "********"


def redact_url(url: str) -> str:
    """A URL with its password (if any) masked: how ``store.url`` appears in logs, errors and shows."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def setting(default: Any, doc: str, **constraints: Any) -> Any:
    """A config field: its default, the line that documents it, and its constraints."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **constraints})
    return field(default=default, metadata={"doc": doc, **constraints})


def section(cls: type, doc: str) -> Any:
    return field(default_factory=cls, metadata={"doc": doc})


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, kw_only=True)
class DaemonConfig:
    hostname: str = setting("localhost", "Name the gateway gives itself: EHLO, Received headers, Message-IDs without a domain.")
    shutdown_timeout: float = setting(30.0, "Seconds in-flight work gets to finish after SIGTERM before the daemon exits.", min=0.0)
    memory_budget: int = setting(268435456, "Bytes of message bodies held in memory at once, submission and delivery together; past it new DATA gets 452 4.3.1 and delivery waits.", min=1048576)
    workers: str = setting("1", "Pipeline processes: each serves submission, the inbound MX and the HTTP API on the same listening addresses (and runs a delivery scheduler when daemon.delivery_workers is 0), all on one store (gateway/pipelines.py). auto: one per CPU this process may run on. 1: everything in one process (the embedded default). The admin socket, the web worker and the jobs that run once stay in the daemon's own process. memory_budget, delivery.workers, delivery.per_destination, delivery.max_inflight and the api.max_inflight bounds are the whole daemon's: each process gets its share.", kind="workers", restart=True)
    delivery_workers: str = setting("auto", "Delivery processes beside the daemon.workers pipelines (only when daemon.workers is 2 or more): they run the delivery schedulers at delivery.nice, and the pipelines then only accept (submission and the MX), so a burst is accepted at the acceptance-only rate and delivery drains the queue behind it. auto: as many as daemon.workers. 0: each pipeline delivers too (one process does both).", kind="delivery_workers", restart=True)
    node_id: str = setting("", "This node's name among the gateway processes sharing one store: the claims and job leases of its processes carry it (<node>:<pid>:<random>), and at start it releases its own node's claims only. Letters, digits, '.', '_', '-'. Empty: made at the first start and kept in <state dir>/node-id (host name and random digits). Two running daemons must never share one (do not copy that file to a second node).", kind="node", restart=True)
    job_lease: float = setting(30.0, "Seconds a job that runs on one node at a time (sweeper, domain re-verification, inbound processing, each mailbox's poller) keeps its lease in the store without renewing it (renewed every third of it): when a node dies, another takes the job over within this. Node clocks must agree to well within it (NTP).", min=0.3, max=3600.0)
    gil_switch_interval: float = setting(0.005, "Seconds the interpreter lets one thread hold the GIL before another may take it (sys.setswitchinterval). Lower cuts the web server's tail latency under submission load (0.0005: unsubscribe POST p99 about halved) but costs mail throughput (MX acceptance about 12% lower, measured with scripts/bench_mx.py).", min=0.0001, max=0.1, restart=True)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str = setting("info", "Lowest level logged.", choices=("debug", "info", "warning", "error"))
    format: str = setting("auto", "auto: readable on a terminal, JSON lines otherwise (journald).", choices=("auto", "console", "json"))


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    listen: str = setting("127.0.0.1:8025", "host:port of the HTTP server (/health, /metrics, the unsubscribe pages /u/...).", kind="hostport", restart=True)
    process: bool = setting(True, "Serve web.listen from a child process of its own (restarted when it dies, reloaded on SIGHUP), so the pages never wait on submission's event loop and GIL. false: served inside the daemon's process.", restart=True)
    public_url: str = setting("http://127.0.0.1:8025", "Base URL under which receivers reach this HTTP server (a reverse proxy in front of web.listen); List-Unsubscribe links are <public_url>/u/TOKEN. Gmail and Yahoo honour one-click only over https.", kind="url")


@dataclass(frozen=True, kw_only=True)
class UnsubscribeConfig:
    mailto: bool = setting(True, "List-Unsubscribe carries a mailto: URI too (RFC 2369), beside the https one: a mail to it (the token in its subject) is received by the inbound MX and unsubscribes as the link does (source mailto). Off: the https link only.")
    mailto_domain: str = setting("", "Domain of the mailto: address (unsubscribe@<this>). Empty: the message's return-path domain (<domains.return_path_prefix>.<sending domain>), which already points its MX at the gateway.")


@dataclass(frozen=True, kw_only=True)
class AdminConfig:
    socket: str = setting("", "Path of the admin socket. Empty: $RUNTIME_DIRECTORY/admin.sock, else <state dir>/admin.sock.", restart=True)
    max_request_bytes: int = setting(1024 * 1024, "Longest request line the admin socket accepts.", min=1024)


@dataclass(frozen=True, kw_only=True)
class StoreConfig:
    url: str = setting("", "Where the store lives. Empty: SQLite, gateway.db in the state directory. postgresql://user@host:port/dbname: PostgreSQL (several nodes may share one); the password goes in the URL (postgresql://user:secret@...) or the PGPASSWORD environment variable, and is never logged. Copy an SQLite store over with `gateway store migrate-to URL`.", restart=True, secret="url")
    batch_max: int = setting(1000, "Most writes the writer commits in one transaction (group commit).", min=1, restart=True)
    read_connections: int = setting(4, "Threads, each with its own read connection.", min=1, max=64, restart=True)
    min_free_bytes: int = setting(67108864, "Free bytes the state directory's filesystem keeps in reserve: below it new mail gets 452 4.3.1 while delivery, its records and operator actions still write. 0: no reserve (a full disk still gives 452 4.3.1).", min=0)


@dataclass(frozen=True, kw_only=True)
class DnsConfig:
    nameservers: list[str] = setting([], "Resolvers to query (IP addresses). Empty: those of /etc/resolv.conf.")
    port: int = setting(53, "UDP/TCP port of the resolvers (tests point this at a local server).", min=1, max=65535)
    timeout: float = setting(5.0, "Seconds one DNS lookup may take before it is an error.", min=0.1)


@dataclass(frozen=True, kw_only=True)
class DomainsConfig:
    sending_ips: list[str] = setting([], "IPv4/IPv6 addresses (or CIDR networks) the gateway sends from. verify checks that each one gets an SPF pass.", kind="ipnet")
    spf_include: str = setting("", "Domain whose SPF record lists the sending IPs (include:<this>). Empty: SPF records list sending_ips, else a:<mx_hostname>.")
    mx_hostname: str = setting("", "Inbound (MX) hostname that tenant domains and return-path domains point their MX at. Empty: daemon.hostname.")
    return_path_prefix: str = setting("bounces", "Label of the return-path (VERP bounce) subdomain: envelope senders are <verp>@<prefix>.<domain>.")
    require_mx: bool = setting(False, "true: the domain's own MX must point at mx_hostname to verify (replies via the gateway). false: shown as optional.")
    dmarc_rua: str = setting("mailto:dmarc-reports@{domain}", "rua= of the suggested DMARC record; {domain} is replaced by the domain.")
    bimi_logo_url: str = setting("", "l= of an optional BIMI record ({domain} is replaced). Empty: no BIMI record is suggested.")
    dkim_algorithm: str = setting("rsa", "Keys a new domain gets when `domain add` names none.", choices=("rsa", "ed25519", "both"))
    reserved: list[str] = setting(["test", "example", "invalid", "localhost", "local", "onion", "arpa", "internal",
                                   "example.com", "example.net", "example.org"],
                                  "Names and suffixes (RFC 2606, RFC 6761) refused as sending domains.")
    reverify_interval: float = setting(3600.0, "Seconds between re-verifications of verified and failing domains; 0 disables them.", min=0.0)
    verify_concurrency: int = setting(50, "Domains verified at once by the periodic re-verifier.", min=1, max=1000)


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    workers: int = setting(32, "Most outbound connections (SMTP sessions or HTTP calls) in flight at once.", min=1, max=1000)
    # 20 as Postfix (default_destination_concurrency_limit): more lanes keep a busy MX pipelined.
    per_destination: int = setting(20, "Most connections at once to one destination (recipient domain or connector).", min=1, max=100)
    claim_batch: int = setting(200, "Recipients claimed from the queue in one go.", min=1, max=10000)
    max_inflight: int = setting(2000, "Most claimed recipients waiting in memory for a connection.", min=1)
    poll_interval: float = setting(5.0, "Seconds between queue scans when nothing wakes the scheduler.", min=0.05)
    claim_lease: float = setting(120.0, "Seconds a claimed recipient stays claimed without its holder renewing it (renewed every third of it while the attempt runs); past it another process or node takes it over, so a node that died mid-delivery has its mail sent by the others within this. Longer than any stall of a live process (a blocked writer, a full disk episode), or a stalled holder's attempt may be repeated.", min=0.3, max=86400.0)
    connect_timeout: float = setting(30.0, "Seconds to open a TCP (and TLS) connection to a remote server.", min=0.1)
    command_timeout: float = setting(120.0, "Seconds each SMTP command or HTTP request may take (DATA included).", min=0.1)
    messages_per_connection: int = setting(100, "Messages sent over one SMTP connection before it is closed.", min=1)
    idle_timeout: float = setting(5.0, "Seconds an idle SMTP connection is kept for the next message to the same MX.", min=0.0)
    remote_port: int = setting(25, "Port of remote MX servers (tests point this at a local sink).", min=1, max=65535)
    starttls: str = setting("opportunistic", "STARTTLS to remote MX servers: opportunistic (when offered, certificate not checked) or off.",
                            choices=("opportunistic", "off"))
    helo_name: str = setting("", "Name sent in EHLO. Empty: daemon.hostname.")
    backoff_base: float = setting(300.0, "Seconds before the first retry of a deferred recipient; doubles per attempt.", min=0.0)
    backoff_max: float = setting(14400.0, "Longest wait between two attempts.", min=0.0)
    backoff_jitter: float = setting(0.2, "Random spread added to each wait, as a fraction of it.", min=0.0, max=1.0)
    dsn_sender: str = setting("", "From address of delivery status notifications. Empty: MAILER-DAEMON@<daemon.hostname>.")
    sendgrid_url: str = setting("https://api.sendgrid.com", "Base URL of the SendGrid API, when a connector sets none.")
    # Postfix's smtp_mx_address_limit / smtp_mx_session_limit: one attempt never walks a long MX list.
    mx_address_limit: int = setting(5, "Most MX addresses tried in one delivery attempt (0: no limit).", min=0)
    mx_session_limit: int = setting(2, "Most SMTP sessions (past the greeting) opened in one delivery attempt before it is deferred (0: no limit).", min=0)
    allow_loopback: bool = setting(False, "Deliver to loopback addresses (an MX or smarthost on 127.0.0.1 or ::1), and let connectors (smtp, sendgrid, imap, pop3) name loopback hosts. Off: such mail bounces 5.4.6 as a loop and such connector hosts are refused when added and when their name resolves there; mail to the gateway's own listeners always bounces.")
    soft_bounce_limit: int = setting(3, "Soft failures of one address (a message that failed for good with a soft class: mailbox full, lifetime ran out) within soft_bounce_window that suppress it for soft_bounce_suppress_for. 0: soft failures never suppress.", min=0)
    soft_bounce_window: float = setting(604800.0, "Seconds in which soft_bounce_limit soft failures must fall, counted from the first (default 7 days).", min=60.0)
    soft_bounce_suppress_for: float = setting(604800.0, "Seconds an address stays suppressed after too many soft failures (default 7 days).", min=60.0)
    nice: int = setting(10, "Nice value (os.nice) of the delivery processes' event loops and signing threads (daemon.delivery_workers), so the kernel gives acceptance the cores first; their store writer keeps the daemon's priority, so a commit of theirs never holds the pipelines' turn at the file for long. 0: no lower priority. Nice never starves: at 10 a busy delivery process still gets about a tenth of a core that acceptance wants.", min=0, max=19, restart=True)
    stall_after: float = setting(300.0, "Seconds delivery may go without sending or recording anything while work is due before /health reports it stalled.", min=0.1)


@dataclass(frozen=True, kw_only=True)
class SubmissionConfig:
    listen: str = setting("127.0.0.1:2587", "host:port of the submission listener (STARTTLS, RFC 6409).", kind="hostport", restart=True)
    listen_tls: str = setting("127.0.0.1:2465", "host:port of the implicit-TLS submission listener (RFC 8314).", kind="hostport", restart=True)
    tls_cert: str = setting("", "PEM certificate chain. Empty (with tls_key empty): a self-signed pair generated in <state dir>/tls.")
    tls_key: str = setting("", "PEM private key of tls_cert. Reloaded with the certificate on SIGHUP.")
    max_message_size: int = setting(26214400, "Largest message accepted, in bytes (advertised as SIZE).", min=1024)
    max_recipients: int = setting(100, "Most recipients per message; the excess gets 452 4.5.3.", min=1)
    max_received_headers: int = setting(50, "More Received headers than this is a mail loop (554 5.4.6).", min=1)
    max_header_bytes: int = setting(262144, "Largest header block of a message, in bytes.", min=1024)
    auth_failures_limit: int = setting(5, "Failed AUTH attempts for one username from one client address (counted before the password is checked) before that login is refused for auth_cooldown.", min=1)
    auth_address_failures_limit: int = setting(30, "Failed AUTH attempts from one client address, all usernames together, before the address is refused for auth_cooldown.", min=1)
    auth_cooldown: float = setting(300.0, "Seconds a login (or a client address) is refused AUTH (454 4.7.0) after too many failures.", min=0.0)
    auth_concurrency: int = setting(2, "Most argon2id password checks at once, all sessions together (legacy hashes, 64 MiB each; keyed hashes take microseconds and need no cap); the rest wait their turn.", min=1, restart=True)
    command_timeout: float = setting(300.0, "Seconds the listener waits for the client's next command (or DATA line).", min=1.0)
    session_timeout: float = setting(1800.0, "Longest one connection may last, in seconds.", min=1.0)
    max_connections: int = setting(1000, "Most connections at once, all clients together.", min=1)
    max_connections_per_client: int = setting(50, "Most connections at once from one client address.", min=1)
    context_ttl: float = setting(5.0, "Seconds a use case's policy view (domain state, tenant flags, senders, channel addresses) is cached.", min=0.0)


@dataclass(frozen=True, kw_only=True)
class InboundConfig:
    enabled: bool = setting(True, "Run the MX listener (mail for tenants' channel addresses and catch-alls, and the gateway's own return-path, feedback and unsubscribe addresses).", restart=True)
    listen: str = setting("127.0.0.1:2525", "host:port of the MX listener (port 25 in production). STARTTLS with submission's certificate; no AUTH.", kind="hostport", restart=True)
    max_message_size: int = setting(26214400, "Largest message accepted, in bytes (advertised as SIZE; more is 552 5.3.4).", min=1024)
    max_recipients: int = setting(100, "Most recipients per message; the excess gets 452 4.5.3 (RFC 5321 4.5.3.1.8: the sender retries them).", min=1)
    max_line_length: int = setting(1000, "Longest DATA line in octets with its CRLF (RFC 5321 4.5.3.1.6); longer is 500 5.5.2.", min=1000)
    max_received_headers: int = setting(50, "More Received headers than this is a mail loop (554 5.4.6).", min=1)
    max_header_bytes: int = setting(262144, "Largest header block of a message, in bytes (more is 552 5.3.4).", min=1024)
    max_refused_recipients: int = setting(20, "Refused recipients one connection may try (guessing addresses) before it is closed with 421 4.7.0, as Postfix's smtpd_hard_error_limit.", min=1)
    command_timeout: float = setting(300.0, "Seconds the listener waits for the client's next command or DATA line (RFC 5321 4.5.3.2.7: at least 5 minutes).", min=1.0)
    session_timeout: float = setting(1800.0, "Longest one connection may last, in seconds.", min=1.0)
    max_connections: int = setting(1000, "Most connections at once, all clients together.", min=1)
    max_connections_per_client: int = setting(20, "Most connections at once from one client address.", min=1)
    facts_ttl: float = setting(5.0, "Seconds what the recipient rules read about an address (its channel address, domain and tenant switches) is cached. 0: read at every RCPT.", min=0.0)


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    lifetime: float = setting(432000.0, "Seconds a message may stay in the queue; then deferred recipients bounce (default 5 days).", min=60.0)
    keep_bodies: float = setting(604800.0, "Seconds a finished message (every recipient delivered or bounced) keeps its body; then the sweeper empties it (envelope, recipients and attempts stay). 0: keep bodies until the message goes.", min=0.0)
    keep_messages: float = setting(2592000.0, "Seconds a finished message is kept at all; then the sweeper deletes it with its recipients and attempts (its Message-ID record stays for queue.keep_threads). 0: forever.", min=0.0)
    keep_attempts: float = setting(2592000.0, "Seconds an attempt row (one remote reply) is kept, whether its message finished or not. 0: forever.", min=0.0)
    keep_events: float = setting(2592000.0, "Seconds an event row is kept. 0: forever.", min=0.0)
    keep_threads: float = setting(31536000.0, "Seconds the Message-ID record of a message is kept (what threads a reply to it, ~100 bytes a message); a reply to older mail starts a new thread. 0: forever.", min=0.0)
    sweep_interval: float = setting(600.0, "Seconds between sweeps of old bodies, messages, attempts and events; 0 disables the sweeper.", min=0.0)
    sweep_batch: int = setting(500, "Most rows one sweep write changes or deletes: each batch is a short write, so submission and delivery commits never wait long behind it.", min=1, max=100000)


@dataclass(frozen=True, kw_only=True)
class WebhooksConfig:
    allow_loopback: bool = setting(False, "Allow webhook URLs on loopback (127.0.0.0/8, ::1, localhost). Off: such endpoints are refused when added and when their name resolves there (link-local, multicast and unspecified addresses always are).")
    timeout: float = setting(10.0, "Seconds one webhook POST may take, connecting included.", min=0.1)
    concurrency: int = setting(16, "Most webhook POSTs in flight at once to endpoints that answer, all together (each endpoint sends one at a time, in event order); endpoints that are failing share another quarter of it, so they cannot take the others' slots.", min=1, max=1000, restart=True)
    batch_max: int = setting(100, "Most events in one POST (a JSON array, in event order).", min=1, max=1000)
    poll_interval: float = setting(0.5, "Seconds between looks at an idle endpoint's outbox (the delay of a new event at most).", min=0.01)
    backoff_base: float = setting(5.0, "Seconds before the first retry of a failed POST; doubles per consecutive failure.", min=0.0)
    backoff_max: float = setting(3600.0, "Longest wait between two tries of an endpoint.", min=0.0)
    backoff_jitter: float = setting(0.2, "Random spread added to each wait, as a fraction of it.", min=0.0, max=1.0)
    disable_after: float = setting(259200.0, "Seconds an endpoint may fail without one success before it is disabled (event webhook_disabled; default 3 days).", min=0.0)
    max_backlog: int = setting(100000, "Most undelivered events one endpoint may have waiting; past it the endpoint is disabled (event webhook_disabled), its backlog kept for when it is enabled again.", min=1)
    keep_log: int = setting(100, "Attempts kept in each endpoint's delivery log (status, latency, error).", min=1, max=100000)
    keep_log_seconds: float = setting(2592000.0, "Seconds a delivery-log row is kept at most (the sweeper removes older ones). 0: only keep_log bounds it.", min=0.0)


@dataclass(frozen=True, kw_only=True)
class ProcessorConfig:
    enabled: bool = setting(True, "Process spooled inbound mail. false: it stays spooled (the MX and the pollers still accept it) and is processed once this is true again; e.g. to measure the MX listener alone (scripts/bench_mx.py).", restart=True)
    concurrency: int = setting(16, "Spooled inbound messages processed at once (their MIME parsing and attachment files run in the parser processes, processor.processes, or for messages past processor.process_max_bytes in at most 4 worker threads; the others wait for DNS, the disk or the store meanwhile, and their files' fsyncs and finish commits go together).", min=1, max=256, restart=True)
    processes: int = setting(0, "Processes that parse received messages (MIME, classification, reply stripping; gateway/inbound/pool.py), one message each at a time, so processing uses every core. 0: one per CPU this process may run on. At most processor.concurrency.", min=0, max=64, restart=True)
    process_max_bytes: int = setting(4194304, "Largest message parsed in those processes; a larger one is parsed in a worker thread of the daemon, its attachments streamed to their files (not copied between processes). 0: every message in the daemon's threads, no processes.", min=0, restart=True)
    batch: int = setting(200, "Spooled rows read in one scan of the spool.", min=1, max=10000)
    poll_interval: float = setting(5.0, "Seconds between scans of the spool when nothing wakes the processor (a spool commit wakes it at once).", min=0.05)
    max_depth: int = setting(20, "Deepest MIME nesting parsed; deeper parts are kept as one raw remainder attachment.", min=1, max=200)
    max_parts: int = setting(500, "Most MIME parts parsed in one message; the rest is kept as one raw remainder attachment.", min=1, max=100000)
    max_header_bytes: int = setting(262144, "Most header bytes of one message (and of each part) parsed.", min=1024)
    max_decoded_bytes: int = setting(104857600, "Most decoded bytes (bodies and attachments together) taken from one message; past it the rest is a defect.", min=1024)
    keep_inbound: float = setting(2592000.0, "Seconds a processed inbound message (its raw copy, summary and attachment rows) is kept; then the sweeper deletes it and the attachment files no other message references. Held messages are kept until released. 0: forever.", min=0.0)


@dataclass(frozen=True, kw_only=True)
class PollerConfig:
    interval: float = setting(60.0, "Seconds between polls of a mailbox whose server offers no IMAP IDLE (and of every POP3 mailbox).", min=0.1)
    idle: bool = setting(True, "Wait with IMAP IDLE (RFC 2177) where the server offers it: new mail is fetched as it arrives.")
    idle_timeout: float = setting(600.0, "Seconds one IDLE may last before it is ended and issued again (servers drop it after 30 minutes; a silent server is noticed within this time).", min=1.0, max=1740.0)
    rescan_interval: float = setting(30.0, "Seconds between looks at the connectors table for added, changed or removed incoming settings (a change through the CLI is picked up at once).", min=0.1)
    connect_timeout: float = setting(30.0, "Seconds to connect to a mailbox server and get its greeting (TLS included).", min=0.1)
    command_timeout: float = setting(120.0, "Seconds one IMAP or POP3 command may go without an answer (a FETCH counts while data arrives).", min=0.1)
    max_message_size: int = setting(26214400, "Largest message fetched, in bytes; a bigger one is left on the server, counted and reported (`connector show`, event inbound_skipped).", min=1024)
    batch: int = setting(200, "Most messages fetched, spooled and committed together.", min=1, max=10000)
    batch_bytes: int = setting(16777216, "Most message bytes one batch holds in memory (a bigger message is fetched alone).", min=65536)
    backoff_base: float = setting(30.0, "Seconds before the first retry after a failed connection or login; doubles per consecutive failure.", min=0.0)
    backoff_max: float = setting(3600.0, "Longest wait between two attempts on a failing mailbox.", min=0.0)
    ca_file: str = setting("", "PEM file of extra certificate authorities trusted for mailbox servers (a private CA), besides the system's.")


@dataclass(frozen=True, kw_only=True)
class InboxConfig:
    max_body_bytes: int = setting(131072, "Bytes of each body (text, html, stripped_text) a received-mail webhook carries; a longer one is cut at a character boundary and named in the payload's 'truncated' list (the whole message stays fetchable with `gateway inbox export`).", min=1024)
    max_post_bytes: int = setting(786432, "Most bytes of one webhook POST body carrying received-mail events: it stops taking more events past it (the rest go in the next POST), and one event that would not fit has its bodies cut further. The default stays under the 1 MiB request limit of nginx and aiohttp, so a receiver's default never refuses a POST for ever.", min=65536)
    attachment_url_ttl: float = setting(604800.0, "Seconds an attachment URL in a webhook stays valid, counted from when the POST is made (each retry mints fresh URLs); past it the URL answers 403.", min=60.0)
    forward_interval: float = setting(1.0, "Seconds between looks at the forwarding outbox (received mail to forward over SMTP through the outbound queue).", min=0.01)


@dataclass(frozen=True, kw_only=True)
class ApiConfig:
    enabled: bool = setting(True, "Serve the HTTP API (gateway/api/) on its own listener.", restart=True)
    listen: str = setting("127.0.0.1:8026", "host:port of the HTTP API listener. /metrics and the public pages are not served here.", kind="hostport", restart=True)
    tls: bool = setting(False, "Serve the API over TLS with submission's certificate (submission.tls_cert/tls_key, or the self-signed pair). false: plain HTTP, for loopback or behind a reverse proxy that terminates TLS.", restart=True)
    trusted_proxies: list[str] = setting([], "Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are believed; from anyone else those headers are ignored.", kind="ipnet")
    public_url: str = setting("", "Base URL clients reach the API under (the servers entry of /v1/openapi.json). Empty: taken from each request.")
    rate_limit: float = setting(100.0, "Requests per second one API key may make (a key made with its own --rate-limit uses that); past it 429 with Retry-After.", min=0.1)
    rate_burst: float = setting(2.0, "Seconds of rate_limit a key may spend at once after being idle (the token bucket's depth).", min=1.0)
    max_inflight: int = setting(512, "Requests handled at once, all keys together; past it 503 with Retry-After (bounds memory and open work).", min=1)
    max_inflight_per_client: int = setting(128, "Requests handled at once from one client address (X-Forwarded-For from a trusted proxy); past it 503 with Retry-After, so one address cannot take every slot of max_inflight.", min=1)
    max_inflight_per_key: int = setting(64, "Requests one API key may have open at once; past it 429 with Retry-After (one tenant's slow uploads cannot take every place of max_inflight).", min=1)
    max_body_bytes: int = setting(1048576, "Largest request body of an API call other than sending a message, in bytes (413 past it).", min=1024)
    auth_failure_rate: float = setting(2.0, "Requests with a missing or invalid API key one client address may make a second (bursts of five seconds' worth); past it that address gets 429 with Retry-After, its keys not even looked at, until the budget refills. Behind a reverse proxy set trusted_proxies, or every client shares the proxy's address.", min=0.1)
    idle_timeout: float = setting(30.0, "Seconds a connection may sit without a request (before its first one or between them) before it is closed.", min=0.1, restart=True)
    body_timeout: float = setting(30.0, "Seconds a request's body may take to arrive once its headers have; past it 408 (a body trickled in would hold a request slot for ever).", min=0.1)
    key_cache_ttl: float = setting(5.0, "Seconds a checked API key is remembered; a key revoked through another node stops working within this (one revoked on this node stops at once).", min=0.0)


@dataclass(frozen=True, kw_only=True)
class Config:
    daemon: DaemonConfig = section(DaemonConfig, "The daemon itself.")
    log: LogConfig = section(LogConfig, "Logging (structlog).")
    web: WebConfig = section(WebConfig, "HTTP server.")
    admin: AdminConfig = section(AdminConfig, "Admin socket that the gateway CLI talks to.")
    store: StoreConfig = section(StoreConfig, "SQLite store under the state directory.")
    dns: DnsConfig = section(DnsConfig, "DNS resolution (domain verification, MX lookups).")
    domains: DomainsConfig = section(DomainsConfig, "Sending domains: the DNS records tenants publish and their verification.")
    submission: SubmissionConfig = section(SubmissionConfig, "Submission listeners: apps relay mail through these.")
    inbound: InboundConfig = section(InboundConfig, "The MX listener: mail from the internet to tenants' domains and the gateway's return paths.")
    queue: QueueConfig = section(QueueConfig, "The outbound queue.")
    delivery: DeliveryConfig = section(DeliveryConfig, "Outbound delivery: workers, timeouts, retries, DSNs.")
    webhooks: WebhooksConfig = section(WebhooksConfig, "Signed webhook POSTs of events to tenants' endpoints.")
    poller: PollerConfig = section(PollerConfig, "Mailbox polling (IMAP, POP3) of connectors with incoming settings.")
    unsubscribe: UnsubscribeConfig = section(UnsubscribeConfig, "List-Unsubscribe and one-click unsubscribe (RFC 2369, RFC 8058) on the mail of use cases that carry it.")
    processor: ProcessorConfig = section(ProcessorConfig, "The inbound processing stage: spooled mail classified, parsed, threaded and stored.")
    inbox: InboxConfig = section(InboxConfig, "Received mail handed to tenants' applications: webhook payloads, attachment URLs, forwarding over SMTP.")
    api: ApiConfig = section(ApiConfig, "The tenant HTTP API: keys with roles, sending, management, OpenAPI at /v1/openapi.json.")


# --------------------------------------------------------------------------- parsing

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean (true or false)"}


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "array", dict: "table"}.get(
        type(value), type(value).__name__
    )


# The most pipeline processes daemon.workers may ask for.
MAX_WORKERS = 64


def workers_count(value: str) -> int:
    """daemon.workers as a number of processes (auto: the CPUs this process may run on); 0 when invalid."""
    if value == "auto":
        return max(1, min(len(os.sched_getaffinity(0)), MAX_WORKERS))
    return int(value) if value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_WORKERS else 0


def delivery_workers_count(daemon: DaemonConfig) -> int:
    """The delivery processes beside the pipelines (daemon.delivery_workers): 0 with one process, or
    when the pipelines deliver themselves; auto: one per pipeline."""
    pipelines = workers_count(daemon.workers)
    if pipelines <= 1:
        return 0
    value = daemon.delivery_workers
    return pipelines if value == "auto" else int(value)


def _check_scalar(path: str, expected: type, value: Any, meta: dict, problems: list[str]) -> Any:
    if meta.get("kind") in ("workers", "delivery_workers") and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # workers = 2 reads as well as workers = "2"
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is int and isinstance(value, bool) or not isinstance(value, expected):
        problems.append(f"{path}: expected {_TYPE_NAMES.get(expected, expected.__name__)}, got {_type_name(value)} {value!r}")
        return None
    if "choices" in meta and value not in meta["choices"]:
        problems.append(f"{path}: expected one of {', '.join(map(str, meta['choices']))}, got {value!r}")
    if "min" in meta and value < meta["min"]:
        problems.append(f"{path}: must be at least {meta['min']}, got {value!r}")
    if "max" in meta and value > meta["max"]:
        problems.append(f"{path}: must be at most {meta['max']}, got {value!r}")
    if meta.get("kind") == "workers" and not workers_count(value):
        problems.append(f"{path}: expected auto or a whole number from 1 to {MAX_WORKERS}, got {value!r}")
    if meta.get("kind") == "delivery_workers" and value != "auto" and not (value.isascii() and value.isdigit() and int(value) <= MAX_WORKERS):
        problems.append(f"{path}: expected auto or a whole number from 0 to {MAX_WORKERS}, got {value!r}")
    if meta.get("kind") == "hostport":
        try:
            split_hostport(value)
        except ValueError as exc:
            problems.append(f"{path}: {exc}")
    if meta.get("kind") == "node" and value and not NODE_ID.match(value):
        problems.append(f"{path}: expected letters, digits, '.', '_' or '-' (at most 64), got {value!r}")
    if meta.get("kind") == "ipnet":
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            problems.append(f"{path}: expected an IP address or network, got {value!r}")
    if meta.get("kind") == "url":
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment \
                or any(c in value for c in " <>\"\\") or not value.isascii() or not value.isprintable():
            problems.append(f"{path}: expected an http(s) URL without query or fragment, got {value!r}")
    return value


def _parse_section(cls: type, data: dict, prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key")
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            continue
        path = f"{prefix}{name}"
        value, expected, meta = data[name], hints[name], dict(f.metadata)
        if dataclasses.is_dataclass(expected):
            if not isinstance(value, dict):
                problems.append(f"{path}: expected a table [{path}], got {_type_name(value)}")
                continue
            values[name] = _parse_section(expected, value, f"{path}.", problems)
        elif typing.get_origin(expected) is list:
            (item_type,) = typing.get_args(expected)
            if not isinstance(value, list):
                problems.append(f"{path}: expected an array, got {_type_name(value)} {value!r}")
                continue
            items = [_check_scalar(f"{path}[{i}]", item_type, v, meta, problems) for i, v in enumerate(value)]
            values[name] = items
        elif typing.get_origin(expected) in (typing.Union, types.UnionType):
            inner = [t for t in typing.get_args(expected) if t is not type(None)][0]
            values[name] = _check_scalar(path, inner, value, meta, problems)
        else:
            values[name] = _check_scalar(path, expected, value, meta, problems)
    if problems:
        return None
    return cls(**values)


def parse_config(data: dict) -> Config:
    """Turn parsed TOML into a Config, or raise ConfigError listing every problem."""
    problems: list[str] = []
    config = _parse_section(Config, data, "", problems)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | os.PathLike | None) -> Config:
    """Load ``path``; with None, the embedded defaults."""
    if path is None:
        return Config()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends in "(at line N, column M)".
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None


def config_path_from(option: str | None) -> str | None:
    """--config wins, then $GATEWAY_CONFIG, then no file at all."""
    return option or os.environ.get("GATEWAY_CONFIG") or None


def split_hostport(value: str) -> tuple[str, int]:
    """'127.0.0.1:2525' or '[::1]:2525' -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    number = ascii_number(port)
    if number is None or number > 65535:
        raise ValueError(f"expected a port number 0-65535, got {port!r}")
    return host, number


def restart_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Keys marked ``restart`` whose value differs: a reload cannot apply them."""
    changed: list[str] = []
    for f in dataclasses.fields(old):
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a):
            changed += restart_keys(a, b, f"{prefix}{f.name}.")
        elif f.metadata.get("restart") and a != b:
            changed.append(f"{prefix}{f.name}")
    return changed


# --------------------------------------------------------------------------- showing


def to_dict(config: Any, *, mask: bool = True, non_default: bool = False) -> dict:
    """The config as nested dicts; secrets masked; optionally only keys that differ from defaults."""
    default = type(config)()
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            sub = to_dict(value, mask=mask, non_default=non_default)
            if sub or not non_default:
                out[f.name] = sub
            continue
        if non_default and value == getattr(default, f.name):
            continue
        if mask and f.metadata.get("secret") == "url" and value:
            value = redact_url(value)  # where it is stays readable, the password does not
        elif mask and f.metadata.get("secret") and value:
            value = MASK
        out[f.name] = value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)


def render_toml(data: dict, prefix: str = "") -> str:
    """Minimal TOML writer for config dicts (tables of scalars and arrays)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    if prefix and (scalars or not tables):
        lines.append(f"[{prefix}]")
    # TOML has no null: an unset optional key is simply left out.
    lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items() if v is not None]
    for name, sub in tables.items():
        if lines:
            lines.append("")
        lines.append(render_toml(sub, f"{prefix}.{name}" if prefix else name))
    return "\n".join(lines)


def render_example(cls: type = Config, prefix: str = "") -> str:
    """config.example.toml: every key, its documentation and its default."""
    lines: list[str] = []
    if not prefix:
        lines += [
            "# gateway configuration. Every key is shown with its default; the daemon runs with no file at all.",
            "# Check a file with `gateway config check --config FILE`.",
        ]
    scalars, tables = [], []
    for f in dataclasses.fields(cls):
        (tables if f.metadata.get("doc") and dataclasses.is_dataclass(typing.get_type_hints(cls)[f.name]) else scalars).append(f)
    for f in scalars:
        meta = f.metadata
        doc = meta.get("doc", "")
        if "choices" in meta:
            doc += f" One of: {', '.join(map(str, meta['choices']))}."
        lines.append(f"# {doc}")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        # TOML has no null: an optional key that is unset by default is shown commented out.
        lines.append(f"# {f.name} =" if default is None else f"{f.name} = {_toml_value(default)}")
    for f in tables:
        name = f"{prefix}.{f.name}" if prefix else f.name
        lines += ["", f"# {f.metadata['doc']}", f"[{name}]"]
        lines.append(render_example(typing.get_type_hints(cls)[f.name], name))
    return "\n".join(line for line in lines if line is not None).rstrip() + ("\n" if not prefix else "")


def render_reference(cls: type = Config, prefix: str = "") -> str:
    """The README's configuration reference: one Markdown table per section."""
    out: list[str] = []
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            name = f"{prefix}.{f.name}" if prefix else f.name
            out.append(f"### `[{name}]`\n\n{f.metadata.get('doc', '')}\n\n" + render_reference(hints[f.name], name))
            continue
        meta = f.metadata
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        doc = meta.get("doc", "")
        if "choices" in meta:
            doc += f" One of: {', '.join(map(str, meta['choices']))}."
        if meta.get("restart"):
            doc += " Needs a restart (a reload keeps the old value)."
        shown = "(unset)" if default is None else _toml_value(default)
        doc = doc.replace("|", "\\|")  # a '|' would end the table cell
        rows.append(f"| `{prefix}.{f.name}` | `{shown}` | {doc} |")
    if rows:
        out.insert(0, "| key | default | meaning |\n| --- | --- | --- |\n" + "\n".join(rows) + "\n")
    return "\n".join(out)
