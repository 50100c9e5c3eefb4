"""Picks plug-ins by name: `get("models", "gpt")` imports bigmodel_jax.models.gpt.

Each kind's modules fulfil one contract (`contracts.py`): the module's
names and, for the classes it exposes (`Task`, `Input`), the class's
members. A module that does not is reported with what it lacks, so nothing
generic branches on names or probes for attributes. Plug-ins are found,
not listed: every module of a kind's package is one (helpers live
elsewhere: `layers/`, `hf/`, `dataio/`).
"""
import importlib
import pkgutil
import typing

from bigmodel_jax import contracts
from bigmodel_jax.errors import ConfigError

CONTRACTS = {"models": contracts.ModelFamily, "data": contracts.InputModule,
             "tasks": contracts.TaskModule,
             "evaluators": contracts.EvaluatorModule}
# Classes a module exposes, and the contract of their members.
CLASS_CONTRACTS = {"data": {"Input": contracts.Input},
                   "tasks": {"Task": contracts.Task},
                   "evaluators": {"Evaluator": contracts.Evaluator}}


def names(kind: str) -> list[str]:
  """The plug-ins of a kind, e.g. names("tasks") -> ["classification", ...]."""
  package = importlib.import_module(f"bigmodel_jax.{kind}")
  return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                if not m.ispkg)


def members(protocol) -> list[str]:
  """The names a Protocol asks for (methods, attributes, hooks)."""
  own = set(vars(protocol)) | set(typing.get_type_hints(protocol))
  return sorted(n for n in own if not n.startswith("_"))


def lacking(obj, protocol) -> list[str]:
  """The members of `protocol` that `obj` (a module or class) lacks."""
  return [n for n in members(protocol) if not hasattr(obj, n)]


def get(kind: str, name: str):
  package = f"bigmodel_jax.{kind}"
  if name not in names(kind):
    raise ConfigError(f"Unknown {kind} {name!r}; have {names(kind)}.")
  module = importlib.import_module(f"{package}.{name}")
  missing = lacking(module, CONTRACTS[kind])
  for attr, protocol in CLASS_CONTRACTS.get(kind, {}).items():
    if hasattr(module, attr):
      missing += [f"{attr}.{n}" for n in lacking(getattr(module, attr),
                                                  protocol)]
  if missing:
    raise TypeError(f"{package}.{name} does not fulfil contracts."
                    f"{CONTRACTS[kind].__name__}: it lacks {missing}.")
  return module


def task_blocks() -> dict:
  """Task name -> its settings block, for the tasks that have settings."""
  blocks = {}
  for name in names("tasks"):
    make = get("tasks", name).Task.config_block
    if make is not None:
      blocks[name] = make()
  return blocks
