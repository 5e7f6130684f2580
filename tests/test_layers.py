"""Data flows one way: services call components and stores, never the reverse (DESIGN.md)."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
# Packages below the services: they may not import services, the admin socket, the CLI or the daemon.
LOWER = ("domains", "store", "delivery", "submission", "inbound")
UPPER = ("gateway.services", "gateway.admin.server", "gateway.cli", "gateway.daemon")


def imports_of(path: Path) -> set[str]:
    """Absolute module names imported by ``path`` (TYPE_CHECKING imports included: they are still a dependency)."""
    return imports_in(path.read_text(), ".".join(("gateway", *path.relative_to(GATEWAY).parent.parts)))


def imports_in(text: str, package: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_lower_layers_do_not_import_upper_ones():
    offending = {}
    for package in LOWER:
        for path in (GATEWAY / package).rglob("*.py"):
            bad = sorted(m for m in imports_of(path) if m.startswith(UPPER))
            if bad:
                offending[str(path.relative_to(GATEWAY))] = bad
    assert offending == {}


def test_the_check_sees_relative_imports():
    # The check itself must be able to fail: a relative import two levels up is resolved.
    assert "gateway.services.domains.DomainService" in imports_in("from ..services.domains import DomainService\n", "gateway.domains")
