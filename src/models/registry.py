"""The model registry: ``@register_model("name")`` on a ``torch.nn.Module`` class built as ``Model(cfg)``.

Called by the training loop (src/training/loop.py), inference and the config smoke tests. What a
registered model promises (the loop relies on nothing else):

- ``forward(batch: dict) -> dict`` with ``"logits"`` (for classifiers: (B, 8), columns in
  ``src.TARGETS`` order) and, when the batch holds ``"labels"``, a scalar ``"loss"``.
- Class attributes that say what it is, so that no other file keeps a table of models:
  ``task``               required: the task (src/tasks) whose datasets, evaluation and inference
                         batches it uses (``vertebra``, ``volume``, ``localise``)
  ``settings``           the config section it and its task read (``effnet_gru``: ``cfg.effnet_gru``);
                         a new model's section is declared by its own config file (src/config.py)
  ``needs_localisation`` True if its task crops by the per-vertebra table: training builds the table
                         first (src/train.py), inference runs the localiser for it (src/inference)
- Optional: ``family`` (W&B tag and report label; default: the registry name) and ``smoke_overrides``
  (``key=value`` strings that shrink it for the CPU smoke test of its config, tests/test_configs.py,
  e.g. ``("effnet_gru.crop_size=32",)``).

A model lives in ``src/models/<module>.py``; the registry finds it by importing every module of this
package the first time a name is unknown, so adding a model never means editing this file.
"""
from __future__ import annotations

import importlib
import warnings
from pathlib import Path

from ..registry import Registry

_REGISTRY = Registry("model", __package__, Path(__file__).parent, skip=("registry", "losses", "__init__"))
_MODELS = _REGISTRY.classes
register_model = _REGISTRY.register
_import_all = _REGISTRY.import_all


def model_names() -> list[str]:
    failed = _import_all()
    if failed:
        warnings.warn(f"model modules that failed to import: {failed}")
    return sorted(_MODELS)


def get_model_class(name: str) -> type:
    if name not in _MODELS:
        # The common case: the module is named like the model; try it alone before importing the rest.
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{name}":
                raise
    failed = _import_all() if name not in _MODELS else {}
    if name not in _MODELS:
        from ..config import ConfigError, closest_keys

        hint = closest_keys(name, _MODELS)
        raise ConfigError(f"unknown model '{name}'" + (f"; did you mean {' or '.join(hint)}?" if hint else "")
                          + f" (registered: {', '.join(sorted(_MODELS))}; a model registers itself in src/models/)"
                          + (f"; modules that failed to import: {failed}" if failed else ""))
    return _MODELS[name]


def build_model(cfg):
    """The model ``cfg.model`` names, built from the config."""
    return get_model_class(cfg["model"])(cfg)


def model_family(cls: type) -> str:
    return getattr(cls, "family", None) or cls.registry_name


def model_task(cls: type) -> str:
    """The task a model class declares; a class without one cannot be trained or inferred."""
    task = getattr(cls, "task", None)
    if not task:
        from ..config import ConfigError

        raise ConfigError(f"model '{cls.registry_name}' ({cls.__module__}) declares no task; set the class "
                          f"attribute task = '<name>' (src/models/registry.py)")
    return task


def model_settings(cfg):
    """The config section of the model ``cfg.model`` names (its class's ``settings``): what its task reads."""
    cls = get_model_class(cfg["model"])
    name = getattr(cls, "settings", None)
    if not name or name not in cfg:
        from ..config import ConfigError

        raise ConfigError(f"model '{cfg['model']}' reads settings section {name!r}, which the config lacks"
                          if name else f"model '{cfg['model']}' ({cls.__module__}) declares no settings section; "
                          f"set the class attribute settings = '<section>' (src/models/registry.py)")
    return cfg[name]
