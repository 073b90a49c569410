"""One error tree: every error the API or ``shared/`` defines lives in one of the two error
modules, is drawn in its module's tree, and has an HTTP status of its own in the API's table
(never the silent 500 of the base class)."""

from __future__ import annotations

import importlib
import pkgutil
import re

import api
import api.errors
import shared
import shared.errors
from api.errors import HTTP_STATUS, status_of
from shared.errors import GenqError


def _every_subclass(cls: type[GenqError]) -> set[type[GenqError]]:
    found = set()
    for sub in cls.__subclasses__():
        found |= {sub, *_every_subclass(sub)}
    return found


def _api_and_shared_errors() -> set[type[GenqError]]:
    for package in (api, shared):
        for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            importlib.import_module(info.name)
    return {cls for cls in _every_subclass(GenqError)
            if cls.__module__.split(".")[0] in ("api", "shared")}


def test_every_error_is_in_an_error_module_and_its_tree() -> None:
    errors = _api_and_shared_errors()
    assert len(errors) >= 25
    for cls in errors:
        module = {"api.errors": api.errors, "shared.errors": shared.errors}.get(cls.__module__)
        assert module is not None, f"{cls.__qualname__} is defined in {cls.__module__}"
        drawn = rf"── {cls.__name__} +{cls.code}\b"
        assert re.search(drawn, module.__doc__ or ""), (cls, cls.code)


def test_every_error_has_a_status_of_its_own() -> None:
    for cls in _api_and_shared_errors():
        owner = next(c for c in cls.__mro__ if c in HTTP_STATUS)
        assert owner is not GenqError, cls
        assert 400 <= status_of(cls) < 600
    assert status_of(shared.errors.AccountNotFound) == 404
    assert status_of(shared.errors.EmailTaken) == 409
    assert status_of(api.errors.RangeNotSatisfiable) == 416
