"""Models, picked by name from the config (``model: cnn3d``) through :mod:`src.models.registry`.

Importing this package imports no model file: :func:`build_model` loads the module that registers the
requested name on first use, so a GPU box with only torch and timm can import any model without the
data or logging libraries.
"""
from .registry import build_model, get_model_class, model_names, register_model

__all__ = ["build_model", "get_model_class", "model_names", "register_model"]
