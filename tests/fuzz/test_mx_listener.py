"""A short fuzz pass against the real MX listener (the same grammar and oracle as submission's, no AUTH)."""

from __future__ import annotations

import pytest

from tests.fuzz.runner import DEFAULT_SEED, run_pass

DIALOGS = 600
BUDGET = 120.0
pytestmark = pytest.mark.timeout(BUDGET + 60)


@pytest.fixture(scope="module")
def fuzz_pass(tmp_path_factory):
    import asyncio

    return asyncio.run(run_pass(tmp_path_factory.mktemp("mxfuzz"), dialogs=DIALOGS, seed=DEFAULT_SEED, budget=BUDGET, target="mx"))


def _report(result) -> str:
    return "\n".join(f"{c}: {info['count']} e.g. {info['dialogs']} {info['texts'][:3]}" for c, info in result.summary()["findings"].items())


def test_every_dialog_ran_and_the_oracle_had_work(fuzz_pass):
    assert fuzz_pass.dialogs == DIALOGS and not fuzz_pass.budget_hit
    assert fuzz_pass.tags["transaction"] > 150 and fuzz_pass.verdicts > 5 and fuzz_pass.replies > 10 * DIALOGS


def test_nothing_reaches_handle_exception_nothing_hangs_every_refusal_has_an_enhanced_code(fuzz_pass):
    assert fuzz_pass.internal_replies == 0 and fuzz_pass.hangs == 0, _report(fuzz_pass)
    assert not {c for c in fuzz_pass.findings.counts if c.startswith(("internal:", "hang", "missing_enhanced"))}, _report(fuzz_pass)


def test_no_message_that_must_be_refused_is_spooled(fuzz_pass):
    assert not {c for c in fuzz_pass.findings.counts if c.startswith("accepted:")}, _report(fuzz_pass)
    assert not fuzz_pass.findings.unknown(), _report(fuzz_pass)
