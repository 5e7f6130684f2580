"""Every raw dialog in tests/data/fuzz/ (what the fuzzer found, minimal) against a real listener."""

from __future__ import annotations

import pytest
import pytest_asyncio

from tests.fuzz import dialogfile
from tests.fuzz.oracle import LogCapture
from tests.fuzz.targets import submission_target

CASES = dialogfile.cases()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def target(tmp_path_factory):
    capture = LogCapture().start()
    try:
        async with submission_target(tmp_path_factory.mktemp("fuzzcases")) as running:
            yield running, capture
    finally:
        capture.stop()


def _param(case: dialogfile.Case):
    marks = [pytest.mark.xfail(strict=False, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.name, marks=marks)


def test_there_are_cases():
    assert len(CASES) >= 8


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", [_param(c) for c in CASES])
async def test_dialog(target, case):
    running, capture = target
    problems = await dialogfile.run(case, running.endpoints, capture, running.idle)
    assert not problems, "\n".join(problems)


def test_dialogs_are_a_function_of_seed_and_index():
    from tests.fuzz import grammar
    from tests.fuzz.targets import SUBMISSION_LIMITS, Endpoint

    ep = Endpoint("submission", "127.0.0.1", 1, "starttls", ("app", "pw"), "app@example.com", limits=SUBMISSION_LIMITS)
    assert grammar.dialog(12, 7, ep) == grammar.dialog(12, 7, ep)
    assert grammar.dialog(12, 7, ep) != grammar.dialog(13, 7, ep)


def test_a_replayed_dialog_reads_back_as_a_case(tmp_path):
    """scripts/fuzz --replay N prints a file in the tests/data/fuzz/ format that sends the same bytes."""
    from tests.fuzz import grammar
    from tests.fuzz.runner import describe
    from tests.fuzz.targets import SUBMISSION_LIMITS, Endpoint

    ep = Endpoint("submission", "127.0.0.1", 1, "starttls", ("app", "pw"), "app@example.com", limits=SUBMISSION_LIMITS)
    for index in range(40):
        d = grammar.dialog(12, index, ep)
        path = tmp_path / f"d{index}.dialog"
        path.write_text(describe(d) + "\n")
        sent = b"".join(arg for kind, arg in dialogfile.parse(path).steps if kind == "send")
        want = b"".join(s.data for s in d.steps if isinstance(s, grammar.Send))
        finish = [s for s in d.steps if isinstance(s, grammar.Finish)]
        if finish:
            want += finish[0].prefix + b"QUIT\r\n"
        assert sent == want, index


def test_a_malformed_case_file_is_refused(tmp_path):
    path = tmp_path / "bad.dialog"
    path.write_text("> NOOP\\r\\n\nwhat is this\n")
    with pytest.raises(ValueError, match="bad.dialog:2"):
        dialogfile.parse(path)
