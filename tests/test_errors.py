"""The one error tree: every exception class the package defines is a GatewayError, drawn in errors.py."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import gateway
from gateway import errors
from gateway.errors import GatewayError


def defined_exceptions() -> dict[str, type]:
    found = {}
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                found[f"{module.__name__}.{name}"] = obj
    return found


def test_every_exception_class_is_in_the_tree_and_drawn():
    classes = defined_exceptions()
    assert len(classes) > 20
    # Control flow that is no Exception (errors.py draws it apart) may stand outside the tree.
    outside = sorted(name for name, cls in classes.items() if issubclass(cls, Exception) and not issubclass(cls, GatewayError))
    assert outside == []
    drawing = errors.__doc__
    undrawn = sorted(name for name, cls in classes.items() if f" {cls.__name__} " not in drawing and f" {cls.__name__}\n" not in drawing)
    assert undrawn == []


def drawn_parents() -> dict[str, str]:
    """Each class in the drawing at the top of errors.py -> the class it is drawn under."""
    parents: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    for line in errors.__doc__.splitlines():
        if "── " in line:
            column = line.index("── ") + 3
        elif line.strip().split(" ")[0] in ("GatewayError", "BaseException"):
            column = len(line) - len(line.lstrip())
        else:
            continue
        name = line[column:].split()[0]
        while stack and stack[-1][0] >= column:
            stack.pop()
        if stack:
            parents[name] = stack[-1][1]
        stack.append((column, name))
    return parents


def test_the_drawing_matches_the_classes():
    parents = drawn_parents()
    assert parents["ParamsError"] == "InvalidArgument" and parents["SMTPTimeout"] == "SMTPClientError"
    wrong = {name: (cls.__mro__[1].__name__, parents[cls.__name__]) for name, cls in defined_exceptions().items()
             if cls.__name__ in parents and cls.__mro__[1].__name__ != parents[cls.__name__]}
    assert wrong == {}, "class: (its base, the parent drawn in errors.py)"


def test_translated_errors_keep_their_behaviour():
    from gateway.delivery.smtpclient import SMTPDisconnected, SMTPTimeout
    from gateway.domains.spf import PermError

    assert issubclass(SMTPDisconnected, ConnectionError) and issubclass(SMTPTimeout, TimeoutError)
    assert issubclass(SMTPTimeout, errors.DeliveryError) and issubclass(PermError, errors.RecordError)
