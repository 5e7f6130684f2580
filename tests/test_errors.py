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
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, GatewayError))
    assert outside == []
    drawing = errors.__doc__
    undrawn = sorted(name for name, cls in classes.items() if f" {cls.__name__} " not in drawing and f" {cls.__name__}\n" not in drawing)
    assert undrawn == []


def test_translated_errors_keep_their_behaviour():
    from gateway.delivery.smtpclient import SMTPDisconnected, SMTPTimeout
    from gateway.domains.spf import PermError

    assert issubclass(SMTPDisconnected, ConnectionError) and issubclass(SMTPTimeout, TimeoutError)
    assert issubclass(SMTPTimeout, errors.DeliveryError) and issubclass(PermError, errors.RecordError)
