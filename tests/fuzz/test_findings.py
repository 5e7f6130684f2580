"""What the property fuzzer found in the pure functions, each as a plain test with the shrunk input.

(Dialogs the network fuzzer found live in tests/data/fuzz/ and run from test_regressions.py.)
"""

from __future__ import annotations

from gateway.delivery.dsn import FailedRecipient, build_dsn


def test_dsn_lines_stay_within_998_octets_with_a_long_diagnostic():
    # A remote's reply can be 8 KB a line and 200 lines; RFC 5322 2.1.1 allows 998 octets a line.
    failed = [FailedRecipient("eve@dest.test", "5.0.0", "0" * 999, "mx.dest.test")]
    data, _ = build_dsn(original=b"", queue_id="0h3k9x2a7mq4rt5b", arrival=0.0, envelope_from="app@acme.test",
                        failed=failed, reporting_mta="gw.example", sender="MAILER-DAEMON@gw.example", now=1.0)
    assert max(len(line) for line in data.split(b"\r\n")) <= 998
    assert b"Diagnostic-Code: smtp; 000" in data  # still says what the remote said, shortened
