"""Picks components by name: `get("models", "gpt")` imports bigmodel_jax.models.gpt.

Every module of a kind exposes the same names (models: `model_config`, `make`;
data: `Input`, `load_tokenizer`), so the trainer never branches on names.
"""
import importlib
import pkgutil


def get(kind: str, name: str):
  package = importlib.import_module(f"bigmodel_jax.{kind}")
  try:
    return importlib.import_module(f"{package.__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{package.__name__}.{name}":
      raise
    have = sorted(m.name for m in pkgutil.iter_modules(package.__path__))
    raise ValueError(f"Unknown {kind} {name!r}; have {have}.") from None
