"""A fuzz pass over a listener: N dialogs from a seed, a hard time budget, a few dialogs at once.

    python -m tests.fuzz.runner --dialogs 100000 --seed 12 --budget 3600      (what scripts/fuzz runs)
    python -m tests.fuzz.runner --replay 1234 --seed 12                       (print one dialog's steps)

Prints dialogs/s, findings by class (known ones marked), hangs and the process's RSS at start and end;
exits 1 when a class outside oracle.KNOWN turned up.
The listener runs in this process (as in the tests), so the RSS is the daemon's plus the client's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.fuzz import grammar, wire
from tests.fuzz.oracle import INTERNAL, KNOWN, Findings, LogCapture, missing_enhanced
from tests.fuzz.targets import TARGETS, Endpoint

DEFAULT_SEED = 12  # issue 12


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class PassResult:
    seed: int
    dialogs: int = 0
    seconds: float = 0.0
    replies: int = 0
    internal_replies: int = 0
    hangs: int = 0
    closed_early: int = 0
    verdicts: int = 0
    log_lines: int = 0
    rss_start_kib: int = 0
    rss_end_kib: int = 0
    budget_hit: bool = False
    tags: Counter = field(default_factory=Counter)
    findings: Findings = field(default_factory=Findings)
    error_records: list[dict] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.dialogs / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {
            "seed": self.seed, "dialogs": self.dialogs, "seconds": round(self.seconds, 1), "dialogs_per_s": round(self.rate, 1),
            "replies": self.replies, "internal_error_replies": self.internal_replies, "hangs": self.hangs,
            "error_log_lines": sum(n for c, n in self.findings.counts.items() if c.startswith("internal:")),
            "verdicts_checked": self.verdicts, "closed_early": self.closed_early, "log_lines": self.log_lines,
            "rss_start_mib": round(self.rss_start_kib / 1024, 1), "rss_end_mib": round(self.rss_end_kib / 1024, 1),
            "budget_hit": self.budget_hit,
            "findings": {c: {"count": n, "known": KNOWN.get(c, ""), "dialogs": self.findings.examples.get(c, []),
                             "texts": [t.decode("latin-1") for t, _ in self.findings.texts.get(c, Counter()).most_common(12)]}
                         for c, n in sorted(self.findings.counts.items())},
        }


def endpoint_for(endpoints: list[Endpoint], index: int) -> Endpoint:
    """Seven dialogs in ten on the first endpoint (STARTTLS), the rest spread over the others."""
    if len(endpoints) == 1 or index % 10 < 7:
        return endpoints[0]
    return endpoints[1 + index % (len(endpoints) - 1)]


def judge(result: PassResult, capture: LogCapture, index: int, dialog: grammar.Dialog, outcome: wire.Outcome,
          classes_before: Counter) -> None:
    where = f"{dialog.endpoint}#{index}"
    result.dialogs += 1
    result.tags.update(set(dialog.tags))
    result.replies += len(outcome.replies)
    for reply in outcome.replies:
        if missing_enhanced(reply):
            result.findings.add("missing_enhanced", where, reply)
        if reply.startswith(INTERNAL):
            result.internal_replies += 1
    if outcome.hang:
        result.hangs += 1
        starttls = any(isinstance(s, grammar.Send) and b"starttls" in s.data.lower() for s in dialog.steps)
        result.findings.add("hang:starttls-pipelined" if starttls else "hang", where, outcome.hang.encode())
    if outcome.closed_early:
        result.closed_early += 1
    for why, reply in outcome.verdicts:
        result.verdicts += 1
        if reply.startswith(b"2"):
            result.findings.add(f"accepted:{why}", where, reply)
    for cls, n in (capture.classes - classes_before).items():
        result.findings.examples.setdefault(cls, [])
        if len(result.findings.examples[cls]) < 5:
            result.findings.examples[cls].append(where)


async def run_pass(tmp_path: Path, *, dialogs: int, seed: int = DEFAULT_SEED, budget: float = 120.0, concurrency: int = 8,
                   target: str = "submission", capture: LogCapture | None = None, progress: float = 0.0,
                   start: int = 0) -> PassResult:
    """Run up to ``dialogs`` dialogs (numbers ``start`` on) within ``budget`` seconds against a fresh listener."""
    result = PassResult(seed=seed, rss_start_kib=rss_kib())
    own_capture = capture is None
    capture = (capture or LogCapture()).start()
    try:
        async with TARGETS[target](tmp_path) as running:
            endpoints = running.endpoints
            started = time.monotonic()
            deadline = started + budget
            next_index = start
            last_report = started

            async def worker() -> None:
                nonlocal next_index, last_report
                while next_index < start + dialogs and time.monotonic() < deadline:
                    index = next_index
                    next_index += 1
                    ep = endpoint_for(endpoints, index)
                    d = grammar.dialog(seed, index, ep)
                    before = capture.classes.copy()
                    outcome = await wire.play(ep, d)
                    judge(result, capture, index, d, outcome, before)
                    if progress and time.monotonic() - last_report > progress:
                        last_report = time.monotonic()
                        el = last_report - started
                        print(f"fuzz: {result.dialogs} dialogs in {el:.0f}s ({result.dialogs / el:.1f}/s), "
                              f"internal errors {result.internal_replies}, error log lines {capture.errors}, hangs {result.hangs}, "
                              f"RSS {rss_kib() / 1024:.0f} MiB", file=sys.stderr, flush=True)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
            result.seconds = time.monotonic() - started
            result.budget_hit = result.dialogs < dialogs
        # The listener has stopped. A session task that died of an exception nobody retrieved is logged
        # by asyncio when the task is collected: collect now, while the log is still captured.
        gc.collect()
        await asyncio.sleep(0)
        for cls, n in capture.classes.items():
            result.findings.counts[cls] = n
        result.log_lines = capture.lines
        result.error_records = list(capture.kept)
    finally:
        if own_capture:
            capture.stop()
    result.rss_end_kib = rss_kib()
    return result


def describe(d: grammar.Dialog) -> str:
    """A dialog in the tests/data/fuzz/ file format (see dialogfile.py), to start a minimal case from."""
    out = [f"# replayed: endpoint {d.endpoint}, dialog {d.index}, tags {' '.join(d.tags)}"]
    for step in d.steps:
        if isinstance(step, grammar.Send):
            out.append("> " + repr(step.data)[2:-1].replace('"', '\\"'))
        elif isinstance(step, grammar.StartTLS):
            out.append("starttls")
        elif isinstance(step, grammar.Login):
            out.append("login")
        elif isinstance(step, grammar.Close):
            out.append("abort" if step.abort else "close")
        elif isinstance(step, grammar.Finish):
            if step.prefix:
                out.append("> " + repr(step.prefix)[2:-1])
            out.append("> QUIT\\r\\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dialogs", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--start", type=int, default=0, help="number of the first dialog (to rerun a stretch of a long pass)")
    ap.add_argument("--budget", type=float, default=3600.0, help="hard cap in seconds")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--target", default="submission", choices=sorted(TARGETS))
    ap.add_argument("--replay", type=int, help="print dialog N (as a tests/data/fuzz file) and exit")
    ap.add_argument("--json", action="store_true", help="the summary as JSON")
    args = ap.parse_args(argv)
    if args.replay is not None:
        from tests.fuzz.targets import SUBMISSION_LIMITS

        eps = [Endpoint("submission", "127.0.0.1", 0, "starttls", ("app", "x"), "app@example.com", limits=SUBMISSION_LIMITS),
               Endpoint("submissions", "127.0.0.1", 0, "implicit", ("app", "x"), "app@example.com", limits=SUBMISSION_LIMITS)]
        print(describe(grammar.dialog(args.seed, args.replay, endpoint_for(eps, args.replay))))
        return 0
    with tempfile.TemporaryDirectory(prefix="gateway-fuzz-") as tmp:
        result = asyncio.run(run_pass(Path(tmp), dialogs=args.dialogs, seed=args.seed, budget=args.budget,
                                      concurrency=args.concurrency, target=args.target, progress=30.0,
                                      start=args.start))
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            if key != "findings":
                print(f"{key}: {value}")
        for cls, info in summary["findings"].items():
            mark = f"known ({info['known']})" if info["known"] else "NEW"
            print(f"finding {cls}: {info['count']} [{mark}] e.g. dialogs {', '.join(info['dialogs'])}")
            for text in info["texts"]:
                print(f"    {text}")
    unknown = {c for c in summary["findings"] if c not in KNOWN}  # an unexplained hang is class "hang"
    return 1 if unknown else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
