#!/usr/bin/env python3
"""MIME figures: parse rate for ordinary replies, and peak memory for a 25 MB attachment.

    .venv/bin/python scripts/bench_mime.py [--messages 2000] [--attachment-mb 25]

(a) msg/s for 50 KB messages (text and HTML alternatives, a quoted history, two attachments): parse
    alone, parse + stripped reply, and parse + stripped reply + both attachments stored as files
    (different bytes per message, so every put writes and fsyncs): one put at a time, and in batches
    of 50 messages (AttachmentFiles.batch, fsyncs together). The processor's target for its whole
    stage is 500 msg/s.
(b) Peak RSS above idle while a fresh process reads a message with one --attachment-mb attachment
    (base64, as mail carries it) from a file, parses it and stores the attachment (the processor
    reads it from the store the same way). Target: under 3x the message's size.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.inbound.attachments import AttachmentFiles  # noqa: E402
from gateway.inbound.mime import parse  # noqa: E402
from gateway.inbound.reply import stripped_reply  # noqa: E402


def b64(data: bytes) -> bytes:
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def message(n: int, size: int = 50_000) -> bytes:
    """A Gmail-shaped reply of about ``size`` bytes: alternatives, a quote, a PDF and a PNG."""
    reply = f"Thanks, number {n} works now. Attached the receipt and a screenshot.\r\n\r\n"
    quote = "On Tue, 1 Dec 2026 at 10:00, Shop <hello@shop.example.com> wrote:\r\n" + "> earlier text of the thread\r\n" * 60
    text = (reply + quote).encode()
    html = (f"<div>{reply}</div><blockquote>" + "earlier text of the thread<br>" * 60 + "</blockquote>").encode()
    room = max(0, size - len(text) - len(html) - 1500)
    pdf = b"%PDF-1.4 " + n.to_bytes(4, "big") + os.urandom(room * 3 // 8)
    png = b"\x89PNG\r\n\x1a\n" + n.to_bytes(4, "big") + os.urandom(room * 3 // 8)
    return (b"From: Carla <carla@example.com>\r\nTo: hello@shop.example.com\r\nSubject: Re: order\r\n"
            b"Message-ID: <m%d@example.com>\r\nIn-Reply-To: <o1@shop.example.com>\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=M\r\n\r\n--M\r\nContent-Type: multipart/alternative; boundary=A\r\n\r\n"
            b"--A\r\nContent-Type: text/plain; charset=UTF-8\r\n\r\n" % n + text +
            b"\r\n--A\r\nContent-Type: text/html; charset=UTF-8\r\n\r\n" + html + b"\r\n--A--\r\n"
            b"--M\r\nContent-Type: application/pdf; name=receipt.pdf\r\nContent-Disposition: attachment; filename=receipt.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(pdf) +
            b"--M\r\nContent-Type: image/png; name=screen.png\r\nContent-Disposition: attachment; filename=screen.png\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(png) + b"--M--\r\n")


def rate(label: str, messages: list[bytes], step) -> None:
    start = time.perf_counter()
    for raw in messages:
        step(raw)
    elapsed = time.perf_counter() - start
    print(f"{label:<38} {len(messages) / elapsed:>9,.0f} msg/s  ({elapsed / len(messages) * 1e3:.3f} ms each)")


def memory_child(path: str, state: str) -> None:
    def status(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise SystemExit(f"no {field} in /proc/self/status")

    files = AttachmentFiles(Path(state))
    parse(message(0, 5000))  # imports and first-use caches count as idle
    idle = status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    raw = Path(path).read_bytes()
    parsed = parse(raw)
    for part in parsed.attachments:
        files.put(part.chunks())
    stripped_reply(parsed.text, parsed.html)
    peak = status("VmHWM") - idle
    print(f"{len(raw)} {peak} {sum(p.size for p in parsed.attachments)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--attachment-mb", type=float, default=25)
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)

    messages = [message(n) for n in range(args.messages)]
    print(f"(a) {len(messages)} messages of {sum(map(len, messages)) // len(messages):,} bytes, two attachments each")
    rate("parse", messages, parse)
    rate("parse + stripped reply", messages, lambda raw: stripped_reply(parse(raw).text))
    with tempfile.TemporaryDirectory() as tmp:
        files = AttachmentFiles(Path(tmp) / "attachments")

        def full(raw: bytes) -> None:
            parsed = parse(raw)
            stripped_reply(parsed.text)
            for part in parsed.attachments:
                files.put(part.chunks())
        rate("parse + reply + 2 files, put (fsync)", messages[: max(1, len(messages) // 4)], full)

        def batched(group: list[bytes]) -> None:
            with files.batch() as batch:
                for raw in group:
                    parsed = parse(raw)
                    stripped_reply(parsed.text)
                    for part in parsed.attachments:
                        batch.put(part.chunks())
        rest = messages[len(messages) // 4:]
        start = time.perf_counter()
        for i in range(0, len(rest), 50):
            batched(rest[i:i + 50])
        elapsed = time.perf_counter() - start
        print(f"{'parse + reply + 2 files, batch of 50':<38} {len(rest) / elapsed:>9,.0f} msg/s  "
              f"({elapsed / len(rest) * 1e3:.3f} ms each)")

    with tempfile.TemporaryDirectory() as tmp:
        data = os.urandom(int(args.attachment_mb * 2**20))
        raw = (b"From: big@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n"
               b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/zip; name=big.zip\r\n"
               b"Content-Transfer-Encoding: base64\r\n\r\n" + b64(data) + b"\r\n--B--\r\n")
        path = Path(tmp) / "big.eml"
        path.write_bytes(raw)
        del raw, data
        out = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(Path(tmp) / "attachments")],
                             capture_output=True, text=True, check=True).stdout.split()
        size, peak, attached = map(int, out)
        print(f"(b) message {size / 2**20:.1f} MiB ({attached / 2**20:.1f} MiB attachment): peak RSS above idle "
              f"{peak / 2**20:.1f} MiB = {peak / size:.2f}x the message (target < 3x)")


if __name__ == "__main__":
    main()
