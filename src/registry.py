"""Classes registered by name and found by importing their package: what src.models and src.tasks share.

A module registers its class with the decorator; a lookup of an unknown name imports every module of
the package first, so adding a model or a task never means editing a list. One broken module (a missing
optional library, work in progress) must not hide the others: its import error is collected and shown
with the failed lookup instead of raised.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Callable


class Registry:
    def __init__(self, kind: str, package: str, package_dir: Path, skip: tuple[str, ...] = ()):
        self.kind = kind
        self.package = package
        self.package_dir = Path(package_dir)
        self.skip = set(skip)
        self.classes: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            if name in self.classes and self.classes[name] is not cls:
                raise ValueError(f"{self.kind} name '{name}' is registered twice "
                                 f"({self.classes[name].__module__} and {cls.__module__})")
            self.classes[name] = cls
            cls.registry_name = name
            return cls

        return decorate

    def import_all(self) -> dict[str, str]:
        """Import every module of the package so their decorators run; {module: error} for those that failed."""
        failed = {}
        for module in pkgutil.iter_modules([str(self.package_dir)]):
            if module.name not in self.skip:
                try:
                    importlib.import_module(f"{self.package}.{module.name}")
                except Exception as err:  # noqa: BLE001 - reported by the caller
                    failed[module.name] = f"{type(err).__name__}: {err}"
        return failed
