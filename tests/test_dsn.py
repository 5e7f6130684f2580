"""DSN building (RFC 3464), backoff and reply classification: pure functions."""

from __future__ import annotations

import email
import email.policy

from gateway.delivery.backoff import next_attempt, retry_delay
from gateway.delivery.dsn import FailedRecipient, build_dsn, failure_status
from gateway.delivery.reply import Reply, split_enhanced

ORIGINAL = b"From: App <app@acme.test>\r\nTo: eve@dest.test\r\nSubject: Invoice\r\nMessage-ID: <m1@acme.test>\r\n\r\nsecret body\r\n"


def test_dsn_is_a_multipart_report_with_one_block_per_failed_recipient():
    failed = [FailedRecipient("eve@dest.test", "5.1.1", "550 5.1.1 no such user", "mx.dest.test"),
              FailedRecipient("old@dest.test", "4.4.7", "451 4.3.0 busy (gave up)\r\nX-Injected: yes", "", expired=True)]
    data, message_id = build_dsn(original=ORIGINAL, queue_id="01abc", arrival=1_700_000_000, envelope_from="app@acme.test",
                                 failed=failed, reporting_mta="gw.example", sender="MAILER-DAEMON@gw.example", now=1_700_000_100)
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert msg.get_content_type() == "multipart/report" and msg.get_param("report-type") == "delivery-status"
    assert msg["To"].addresses[0].addr_spec == "app@acme.test" and msg["Auto-Submitted"] == "auto-replied" and msg["Message-ID"] == f"<{message_id}>"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
    status = parts[1].as_bytes()
    assert b"Reporting-MTA: dns; gw.example" in status
    assert status.count(b"Action: failed") == 2
    assert b"Final-Recipient: rfc822; eve@dest.test" in status and b"Original-Recipient: rfc822; eve@dest.test" in status
    assert b"Status: 5.1.1" in status and b"Remote-MTA: dns; mx.dest.test" in status and b"Status: 4.4.7" in status
    # a reply with CR/LF cannot inject a header or field
    assert b"\r\nX-Injected" not in data
    headers = parts[2].as_bytes()
    assert b"Subject: Invoice" in headers and b"secret body" not in data  # headers only, never the body
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF throughout


def test_failure_status():
    assert failure_status("5.1.1", False) == "5.1.1"
    assert failure_status("4.0.0", False) == "5.0.0"
    assert failure_status("4.7.1", True) == "4.7.1"
    assert failure_status("4.0.0", True) == "4.4.7"


def test_backoff_doubles_with_jitter_bounded_by_max_and_lifetime():
    assert [retry_delay(n, base=60, maximum=3600, jitter=0, rand=lambda: 0.5) for n in (1, 2, 3, 10)] == [60, 120, 240, 3600]
    assert retry_delay(1, base=60, maximum=3600, jitter=0.5, rand=lambda: 1.0) == 90
    assert next_attempt(1000, 1, 1030, base=60, maximum=3600, jitter=0) == 1030  # never past expiry


def test_reply_classification():
    assert Reply.from_smtp(250, "2.0.0 OK").outcome == "delivered"
    r = Reply.from_smtp(550, "5.1.1 <eve@x>: no\nsuch user")
    assert (r.outcome, r.enhanced, r.text) == ("bounced", "5.1.1", "<eve@x>: no such user")
    assert Reply.from_smtp(421, "try later").outcome == "deferred"
    assert Reply(0, "", "connection refused").outcome == "deferred"  # unknown: temporary
    assert split_enhanced("5.7.26 unauthenticated") == ("5.7.26", "unauthenticated")
    assert split_enhanced("550 is not a code") == ("", "550 is not a code")
