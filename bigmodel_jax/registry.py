"""Picks plug-ins by name: `get("models", "gpt")` imports bigmodel_jax.models.gpt.

Each kind's modules fulfil one contract (`contracts.py`); a module that does
not is reported with the names it lacks, so the trainer never branches on
names or probes for attributes.
"""
import importlib
import pkgutil
import typing

from bigmodel_jax import contracts
from bigmodel_jax.errors import ConfigError

CONTRACTS = {"models": contracts.ModelFamily, "data": contracts.InputModule,
             "tasks": contracts.TaskModule}


def names(kind: str) -> list[str]:
  """The modules of a kind, e.g. names("tasks") -> ["base", "lm", ...]."""
  package = importlib.import_module(f"bigmodel_jax.{kind}")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__))


def members(protocol) -> list[str]:
  """The names a Protocol asks for (methods, attributes, hooks)."""
  own = set(vars(protocol)) | set(typing.get_type_hints(protocol))
  return sorted(n for n in own if not n.startswith("_"))


def get(kind: str, name: str):
  package = f"bigmodel_jax.{kind}"
  try:
    module = importlib.import_module(f"{package}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{package}.{name}":
      raise
    raise ConfigError(f"Unknown {kind} {name!r}; have {names(kind)}.") from None
  lacking = [n for n in members(CONTRACTS[kind]) if not hasattr(module, n)]
  if lacking:
    raise TypeError(f"{package}.{name} does not fulfil contracts."
                    f"{CONTRACTS[kind].__name__}: it lacks {lacking}.")
  return module
