"""schemathesis against the live daemon's own /v1/openapi.json: for every operation, with keys of every
role, on a tenant that has one of each object, valid and invalid requests generated from the document
get no 5xx, only documented status codes and content types, bodies that match their schemas, and a
4xx for every request the document says is invalid.

Bounded: a few examples per operation and role (``EXAMPLES``), one daemon; the whole run is some
seconds a hundred operations. Hypothesis runs in a thread of its own (schemathesis' client is
synchronous) while the daemon serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import traceback
from typing import Any

import aiohttp
import hypothesis
import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.support.world import World, api_world

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection]
# Examples per operation and role, for the roles that hold the operation's permission: the owner's
# reach every handler; the other roles' see what their narrowing (a sender's use case) changes.
EXAMPLES = {"owner": 8, "admin": 2, "agent": 2, "sender": 3}
CONFIG = {"api": {"rate_limit": 100000.0}}


def without_security(doc: dict[str, Any]) -> dict[str, Any]:
    """The document less its security scheme: the key is the test's to send (each role's own), so
    schemathesis need not make up Authorization headers (slow, and overwritten anyway)."""
    doc = copy.deepcopy(doc)
    doc["components"].pop("securitySchemes", None)
    for operations in doc["paths"].values():
        for op in operations.values():
            op.pop("security", None)
    return doc


def fuzz(doc: dict[str, Any], base: str, world: World, calls: collections.Counter[str]) -> list[str]:
    schemathesis.openapi.from_dict(doc).validate()      # the document itself is valid OpenAPI 3.1
    schema = schemathesis.openapi.from_dict(without_security(doc))
    failures: list[str] = []
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            names = [p.name for p in operation.path_parameters]
            real = {n: world.params[n] for n in names if n in world.params}
            strategies = [operation.as_strategy(GenerationMode.POSITIVE, path_parameters=real),   # tenant's real objects
                          operation.as_strategy(GenerationMode.POSITIVE)]
            try:
                strategies.append(operation.as_strategy(GenerationMode.NEGATIVE))
            except Exception:  # noqa: BLE001 - an operation with nothing to get wrong has no negative cases
                pass
            roles = operation.definition.raw["x-roles"]
            for role, examples in EXAMPLES.items():
                if role not in roles:
                    continue    # a 403 whatever it sends: the role matrix checks those exactly
                auth = {"Authorization": f"Bearer {world.keys[role]}"}

                @hypothesis.settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                                     phases=[Phase.explicit, Phase.generate], print_blob=False,
                                     suppress_health_check=list(HealthCheck))
                @hypothesis.given(case=st.one_of(strategies))
                def check(case: Any) -> None:
                    calls[case.operation.label] += 1
                    case.call_and_validate(base_url=base, session=session, headers=auth, checks=CHECKS, timeout=10)

                try:
                    check()
                except Exception as exc:  # noqa: BLE001 - every operation is tried; all failures are reported
                    text = "".join(traceback.format_exception_only(exc))
                    failures.append(f"{operation.label} as {role}:\n{text[:3000]}")
    return failures


# schemathesis' negative-case strategies draw from the random module (its concern, not ours).
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning")
async def test_schemathesis_finds_nothing_wrong_with_any_operation(tmp_path, dns_server):
    async with api_world(tmp_path, dns_server, CONFIG) as world:
        base = f"http://{world.d.address('api')}"
        async with aiohttp.ClientSession() as session, session.get(base + "/v1/openapi.json") as resp:
            doc = await resp.json()
        calls: collections.Counter[str] = collections.Counter()
        failures = await asyncio.to_thread(fuzz, doc, base, world, calls)
        assert not failures, "\n\n".join(failures)
        operations = [f"{method.upper()} {path}" for path, ops in doc["paths"].items() for method in ops]
        assert operations and all(calls[op] >= 1 for op in operations), calls
