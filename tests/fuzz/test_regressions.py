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
