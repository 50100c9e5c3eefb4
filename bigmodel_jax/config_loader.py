"""Experiment configs: `experiments/X.py:arg` files plus `key=value` overrides.

  config = config_loader.load("experiments/gpt_shakespeare_char.py:cpu",
                           {"optimizer.learning_rate": 3e-4})

An override must name an existing key; a misspelled one is an error that
names the key and the closest existing ones.
"""
import argparse
import ast
import difflib
import importlib.util
import json
import os

import ml_collections


class ConfigError(ValueError):
  pass


def load_module(spec: str):
  """(module, arg) of an experiment "path.py[:arg]"."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError(f"Config file {path!r} does not exist.")
  module_spec = importlib.util.spec_from_file_location(
      f"_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module, arg or None


def load_file(spec: str) -> ml_collections.ConfigDict:
  """Calls `get_config(arg)` of the file in "path.py[:arg]"."""
  module, arg = load_module(spec)
  return module.get_config(arg)


def flat_keys(config, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    keys.append(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys.extend(flat_keys(v, f"{prefix}{k}."))
  return keys


def _parse(text: str, field_type):
  """A command-line string as a value of the field's type."""
  if not isinstance(text, str) or field_type is str:
    return text
  if field_type is bool:
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"{text!r} is not a bool")
  if field_type in (int, float):
    return field_type(text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def override(config: ml_collections.ConfigDict, overrides: dict):
  """Sets each dotted key of `overrides`; unknown keys raise ConfigError."""
  known = flat_keys(config)
  for key, value in overrides.items():
    if key not in known:
      close = difflib.get_close_matches(key, known, n=3)
      hint = f" Did you mean {', '.join(close)}?" if close else ""
      raise ConfigError(f"Unknown config key {key!r}.{hint}")
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"Config key {key!r} is a section, not a value.")
    try:
      node[leaf] = _parse(value, node.get_type(leaf))
    except (TypeError, ValueError) as e:
      raise ConfigError(f"Bad value {value!r} for config key {key!r}: {e}")
  return config


def load(spec: str, overrides: dict | None = None):
  return override(load_file(spec), overrides or {})


def parse_overrides(args: list[str]) -> dict:
  """["--config.a.b=1", "--config.c", "2"] -> {"a.b": "1", "c": "2"}."""
  overrides, i = {}, 0
  while i < len(args):
    arg = args[i]
    if not arg.startswith("--config."):
      raise ConfigError(f"Unrecognised argument {arg!r}.")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(args):
        raise ConfigError(f"Missing value for {arg!r}.")
      i += 1
      value = args[i]
    overrides[key] = value
    i += 1
  return overrides


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """A command-line parser with `--config FILE.py[:variant]`; see parse_args."""
  parser = argparse.ArgumentParser(
      description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True,
                      help="experiments/FILE.py[:variant]")
  return parser


def parse_args(parser: argparse.ArgumentParser, argv, make=load):
  """(args, make(args.config, overrides)); `--config.key=value` arguments
  are the overrides. A ConfigError exits with status 2 and its message."""
  args, rest = parser.parse_known_args(argv)
  try:
    return args, make(args.config, parse_overrides(rest))
  except ConfigError as e:
    parser.exit(2, f"error: {e}\n")


def save_json(config, path: str) -> None:
  with open(path, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))


def load_json(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
