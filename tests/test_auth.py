"""AUTH under attack and at scale, against the real daemon: a parallel burst of guesses from one
address, a username spray, the global cap on password checks, legacy argon2id credentials that
migrate to keyed hashes on their next login, and AUTH that does not depend on a write.

Every session is a real TLS client on the implicit-TLS port; bursts are launched together (every
session connected, then each AUTH written in one go) so the checks really overlap.
"""

from __future__ import annotations

import asyncio
import base64
import json

import argon2
import pytest

from gateway.services.usecases import UsecaseService
from tests.support.daemon import running_daemon
from tests.support.dns import dns_overrides
from tests.support.submission import RawClient
from tests.support.tenancy import sending_setup

FAST_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)  # a legacy hash, cheaper to make


def service(d) -> UsecaseService:
    return next(s for s in d.daemon.services if isinstance(s, UsecaseService))


async def burst(d, logins: list[tuple[str, str]]) -> list[int]:
    """Every session connected (implicit TLS, EHLO) first, then every AUTH written in one go; the reply codes in order."""
    sessions = await asyncio.gather(*(RawClient.connect(d.hostport("submissions")[1]) for _ in logins))
    try:
        for session in sessions:
            assert (await session.cmd("EHLO burst.client"))[0] == 250
        for session, (username, password) in zip(sessions, logins):
            session.writer.write(b"AUTH PLAIN " + base64.b64encode(f"\0{username}\0{password}".encode()) + b"\r\n")
        return [code for code, _ in await asyncio.gather(*(s.reply() for s in sessions))]
    finally:
        await asyncio.gather(*(s.close() for s in sessions))


async def login(d, username: str, password: str) -> int:
    [code] = await burst(d, [(username, password)])
    return code


@pytest.fixture
async def gw(tmp_path, dns_server, request):
    extra = getattr(request, "param", {})
    async with running_daemon(tmp_path, {**dns_overrides(dns_server), "submission": extra}) as d:
        yield d, await sending_setup(d, dns_server)


async def test_parallel_burst_gets_no_more_guesses_than_the_limit(gw):
    d, setup = gw
    limit = d.daemon.config.submission.auth_failures_limit
    svc = service(d)
    other = await d.call("usecase.credentials.add", tenant="acme", usecase=setup["usecase"])
    await svc.authenticate(other["username"], "warm-up guess")  # the key is loaded before the burst
    before = svc.passwords.checked
    logins = [(setup["username"], f"wrong-guess-{i}") for i in range(39)]
    logins.insert(20, (setup["username"], setup["password"]))
    codes = await burst(d, logins)
    checked = svc.passwords.checked - before
    failures, successes = codes.count(535), codes.count(235)
    # A success gives its slot back, so at most `limit` wrong guesses are looked at (plus the right one, if it came in time).
    assert checked == failures + successes and failures == limit and successes <= 1, (checked, failures, successes)
    assert checked <= limit + successes, f"{checked} passwords checked in one burst, limit {limit}"
    assert codes.count(454) == len(logins) - checked  # refused without their password being looked at
    if successes:
        assert codes[20] == 235
    # Once `limit` guesses failed, nothing gets in any more, the right password included.
    assert await login(d, setup["username"], setup["password"]) == 454
    assert svc.passwords.checked - before == checked  # the refused ones were never looked at
    # Another app behind the same address, with its own login, is not locked out.
    assert await login(d, other["username"], other["password"]) == 235


async def test_a_pool_of_workers_logging_in_at_once_all_get_in(gw):
    """40 sessions with the right password at once: slots still being checked make the next one wait, not fail."""
    d, setup = gw
    assert await burst(d, [(setup["username"], setup["password"])] * 40) == [235] * 40


@pytest.mark.parametrize("gw", [{"auth_address_failures_limit": 8}], indirect=True)
async def test_one_address_cannot_spray_usernames(gw):
    d, setup = gw
    svc = service(d)
    await svc.authenticate("warm-up", "guess")
    before = svc.passwords.checked
    codes = await burst(d, [(f"guess-{i}", "guess") for i in range(20)])
    assert svc.passwords.checked - before <= 8 and codes.count(454) >= 12
    assert codes.count(235) == 0
    assert await login(d, setup["username"], setup["password"]) == 454  # the address as a whole cools down


@pytest.mark.parametrize("gw", [{"auth_concurrency": 2, "auth_failures_limit": 100, "auth_address_failures_limit": 100}],
                         indirect=True)
async def test_password_checks_are_capped_globally(gw):
    """Legacy argon2id checks cost 64 MiB each: however many sessions ask at once, at most
    ``auth_concurrency`` run (memory bound: auth_concurrency x the hash's memory cost)."""
    d, setup = gw
    password = "legacy-password-value"
    legacy = [f"legacy-{i}" for i in range(8)]
    for username in legacy:
        await d.store.usecases.add_credential("acme", setup["usecase"], username, FAST_ARGON2.hash(password))
    codes = await burst(d, [(u, "wrong") for u in legacy])
    assert codes == [535] * len(legacy)
    passwords = service(d).passwords
    assert passwords.argon2_checks == len(legacy) and passwords.argon2_peak == 2 and passwords.argon2_running == 0


async def test_legacy_argon2_credential_logs_in_and_is_rehashed(gw):
    d, setup = gw
    svc = service(d)
    password = "a-legacy-password-made-before-keyed-hashes"
    await d.store.usecases.add_credential("acme", setup["usecase"], "legacy-1", FAST_ARGON2.hash(password))
    assert await d.store.usecases.legacy_credentials() == 1
    assert await login(d, "legacy-1", "wrong") == 535
    # While an argon2 hash is left, every failure pays one argon2 check: unknown names look like known ones.
    slow = svc.passwords.argon2_checks
    assert await login(d, "no-such-user", "guess") == 535
    assert await login(d, setup["username"], "guess") == 535
    assert svc.passwords.argon2_checks - slow == 2
    assert await login(d, "legacy-1", password) == 235
    await svc.usage.flush()
    row = await d.store.usecases.credential("legacy-1")
    assert row["password_hash"] == svc.passwords.hash(password)
    assert await d.store.usecases.legacy_credentials() == 0
    slow = svc.passwords.argon2_checks
    assert await login(d, "legacy-1", password) == 235
    assert await login(d, "no-such-user", "guess") == 535
    assert svc.passwords.argon2_checks == slow  # migrated: no argon2 left anywhere, for anyone
    listed = await d.call("usecase.credentials.list", tenant="acme", usecase=setup["usecase"])
    assert next(c for c in listed if c["username"] == "legacy-1")["last_used_at"] is not None


async def test_auth_does_not_depend_on_a_write(gw):
    """A store that cannot write (full disk, read-only) must not fail AUTH: last use is best effort."""
    d, setup = gw
    svc = service(d)
    password = "legacy-password-on-a-full-disk"
    await d.store.usecases.add_credential("acme", setup["usecase"], "legacy-2", FAST_ARGON2.hash(password))
    # Every change to a credential fails from now on, as it does on a full disk (the rest of the store still works).
    await d.store.db.write(lambda c: c.execute(
        "CREATE TEMP TRIGGER full_disk BEFORE UPDATE ON credentials BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END"))
    try:
        assert await login(d, setup["username"], setup["password"]) == 235
        assert await login(d, "legacy-2", password) == 235
        await svc.usage.flush()
        assert (await d.store.usecases.credential("legacy-2"))["password_hash"].startswith("$argon2")
    finally:
        await d.store.db.write(lambda c: c.execute("DROP TRIGGER temp.full_disk"))
    assert await login(d, "legacy-2", password) == 235  # the rehash is tried again, and now lands
    await svc.usage.flush()
    assert (await d.store.usecases.credential("legacy-2"))["password_hash"] == svc.passwords.hash(password)
    listed = await d.call("usecase.credentials.list", tenant="acme", usecase=setup["usecase"])
    assert all(c["last_used_at"] for c in listed if c["username"] in (setup["username"], "legacy-2")), json.dumps(listed)
