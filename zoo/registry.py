"""Every zoo model: the ``MODELS`` lists of the modules in zoo/models, in module order."""

from __future__ import annotations

import importlib
import pkgutil

from zoo import models as _models
from zoo.core import ZooModel


def all_models() -> list[ZooModel]:
    found: list[ZooModel] = []
    for info in sorted(pkgutil.iter_modules(_models.__path__), key=lambda m: m.name):
        found += importlib.import_module(f"zoo.models.{info.name}").MODELS
    names = [m.name for m in found]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"zoo models named twice: {sorted(duplicates)}")
    return found


def get(name: str) -> ZooModel:
    by_name = {m.name: m for m in all_models()}
    if name not in by_name:
        raise KeyError(f"no zoo model '{name}'; the zoo has: {', '.join(by_name)}")
    return by_name[name]
