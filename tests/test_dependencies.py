"""Runtime dependencies are exactly what the daemon imports; test and benchmark peers are extras."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def third_party_imports(package: Path) -> set[str]:
    """Top-level modules imported anywhere under ``package`` that are neither stdlib nor ours."""
    found: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in ("gateway", "__future__")}


def test_runtime_dependencies_are_exactly_what_the_daemon_imports():
    distributions = importlib.metadata.packages_distributions()
    imported = {requirement_name(d) for m in third_party_imports(ROOT / "gateway") for d in distributions[m]}
    declared = {requirement_name(spec) for spec in PYPROJECT["project"]["dependencies"]}
    assert declared == imported, {"declared, not imported": declared - imported, "imported, not declared": imported - declared}


def test_every_module_imports_without_the_test_only_packages():
    # A finder that refuses the test and benchmark peers, then every gateway module is imported:
    # a runtime import of one of them fails here, though the test environment has them installed.
    extras = {requirement_name(s) for specs in PYPROJECT["project"]["optional-dependencies"].values() for s in specs}
    blocked = sorted({m for m, ds in importlib.metadata.packages_distributions().items()
                      if {requirement_name(d) for d in ds} & extras} | {"sqlite_utils"})
    code = f"""
import importlib, importlib.abc, pkgutil, sys
BLOCKED = {blocked!r}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in BLOCKED:
            raise ImportError('test-only package imported at runtime: ' + name)
sys.meta_path.insert(0, Refuse())
import gateway
names = [m.name for m in pkgutil.walk_packages(gateway.__path__, 'gateway.')]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) > 40
    assert "hypothesis" in blocked and "aiosmtplib" in blocked and "pytest" in blocked
