"""Experiment configs: `experiments/X.py:arg` files (or a run's saved
config.json) plus `key=value` overrides.

  config = config_loader.load("experiments/gpt_shakespeare_char.py:cpu",
                              {"optimizer.learning_rate": 3e-4})

An override must name an existing key; a misspelled one is an error that
names the key and the closest existing ones. A loaded config is validated
(`validate`): a value that would destroy checkpoints or crash later is an
error naming the key, the value and what is allowed.
"""
import argparse
import ast
import difflib
import importlib.util
import json
import math
import os
import sys

import ml_collections

from bigmodel_jax.errors import ConfigError


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
  """Calls `get_config(arg)` of the file in "path.py[:arg]", or reads a
  run's saved WORKDIR/config.json (to resume it with its own config)."""
  if spec.endswith(".json"):
    if not os.path.isfile(spec):
      raise ConfigError(f"Config file {spec!r} does not exist.")
    try:
      return load_json(spec)
    except ValueError as e:
      raise ConfigError(f"{spec} is not a JSON config: {e}.") from e
  module, arg = load_module(spec)
  try:
    return module.get_config(arg)
  except ValueError as e:  # An unknown variant, most often.
    raise ConfigError(f"{spec}: {e}") from e


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


# Keys that must hold a whole number >= 1 (None allowed where marked).
POSITIVE = ("total_steps", "log_every_steps", "eval_every_steps",
            "checkpoint_every_steps", "grad_accum_steps", "input.batch_size",
            "input.eval_steps", "input.seq_len", "pruning.frequency",
            "early_stopping.patience")
POSITIVE_OR_NONE = ("keep_checkpoints", "optimizer.decay_steps")
# Keys that must hold a finite number >= 0.
NON_NEGATIVE = ("optimizer.learning_rate", "optimizer.min_learning_rate",
                "optimizer.weight_decay", "optimizer.eps",
                "optimizer.warmup_steps", "optimizer.momentum",
                "pruning.begin_step", "early_stopping.min_delta")
# Keys that must hold a finite number > 0.
ABOVE_ZERO = ("optimizer.grad_clip_norm", "distill.temperature")
# Keys that must hold a number in [0, 1) (or [0, 1] where marked).
FRACTIONS = ("optimizer.b1", "optimizer.b2", "pruning.sparsity")
FRACTIONS_TO_ONE = ("distill.alpha",)


_ABSENT = object()


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return _ABSENT
    node = node[part]
  return node


def validate(config) -> ml_collections.ConfigDict:
  """Checks the values that would otherwise fail late or destroy work;
  raises ConfigError naming the first bad key. A warmup as long as the
  decay (a quick `--config.total_steps=50`) is shortened to a tenth of it,
  with a note on stderr. Returns `config`."""
  def bad(key, value, allowed):
    raise ConfigError(f"config.{key}={value!r} is not allowed: {allowed}.")

  for key in POSITIVE + POSITIVE_OR_NONE:
    value = _get(config, key)
    if value is _ABSENT or (value is None and key in POSITIVE_OR_NONE):
      continue
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      bad(key, value, "a whole number >= 1" +
          (" (or None)" if key in POSITIVE_OR_NONE else ""))
  for key in NON_NEGATIVE:
    value = _get(config, key)
    if value is not _ABSENT and (not isinstance(value, (int, float)) or
                                 not math.isfinite(value) or value < 0):
      bad(key, value, "a finite number >= 0")
  for key in ABOVE_ZERO + FRACTIONS + FRACTIONS_TO_ONE:
    value = _get(config, key)
    if value is _ABSENT:
      continue
    number = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value))
    if key in ABOVE_ZERO and not (number and value > 0):
      bad(key, value, "a finite number > 0")
    if key in FRACTIONS and not (number and 0 <= value < 1):
      bad(key, value, "a number in [0, 1)")
    if key in FRACTIONS_TO_ONE and not (number and 0 <= value <= 1):
      bad(key, value, "a number in [0, 1]")
  for key in ("keep_best.mode", "early_stopping.mode"):
    value = _get(config, key)
    if value is not _ABSENT and value not in ("auto", "min", "max"):
      bad(key, value, "'auto', 'min' or 'max'")
  low = _get(config, "optimizer.min_learning_rate")
  if low is not _ABSENT and low > config.optimizer.learning_rate:
    bad("optimizer.min_learning_rate", low, "at most optimizer.learning_rate="
        f"{config.optimizer.learning_rate} (the schedule decays to it)")
  warmup = _get(config, "optimizer.warmup_steps")
  if warmup is not _ABSENT and "total_steps" in config:
    decay = config.optimizer.get("decay_steps") or config.total_steps
    if warmup >= decay:
      config.optimizer.warmup_steps = decay // 10
      print(f"note: optimizer.warmup_steps={warmup} is not below the "
            f"{decay} decay steps; using {decay // 10} (a tenth).",
            file=sys.stderr)
  return config


def load(spec: str, overrides: dict | None = None):
  return validate(override(load_file(spec), overrides or {}))


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
                      help="experiments/FILE.py[:variant], or a run's "
                      "WORKDIR/config.json")
  parser.add_argument("--overrides", metavar="FILE.json",
                      help="overrides {\"key\": value} (e.g. a search's "
                      "--export-best), before the --config.key=value ones")
  return parser


def read_overrides(path: str) -> dict:
  """The {dotted key: value} of an --overrides JSON file."""
  try:
    with open(path) as f:
      overrides = json.load(f)
  except OSError as e:
    raise ConfigError(f"--overrides {path}: {e.strerror or e}.") from e
  except ValueError as e:
    raise ConfigError(f"--overrides {path} is not JSON: {e}.") from e
  if not isinstance(overrides, dict):
    raise ConfigError(f"--overrides {path} must hold a JSON object of "
                      "config keys and values.")
  return overrides


def parse_args(parser: argparse.ArgumentParser, argv, make=load):
  """(args, make(args.config, overrides)); `--config.key=value` arguments
  are the overrides. A ConfigError exits with status 2 and its message."""
  args, rest = parser.parse_known_args(argv)
  try:
    overrides = parse_overrides(rest)
    if getattr(args, "overrides", None):
      overrides = {**read_overrides(args.overrides), **overrides}
    return args, make(args.config, overrides)
  except ConfigError as e:
    parser.exit(2, f"error: {e}\n")


def save_json(config, path: str) -> None:
  with open(path, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))


def save_run_config(config, workdir: str, step: int) -> None:
  """WORKDIR/config.json, and a line in WORKDIR/config_history.jsonl for
  each config the run trained with ({"from_step", "config"}), so resuming
  with another batch size or learning rate keeps the record of how the
  earlier steps were trained. A run started before the history existed
  gets its earlier config as the first line (from_step 0: as far as
  known)."""
  path = os.path.join(workdir, "config.json")
  history = os.path.join(workdir, "config_history.jsonl")
  new = json.loads(config.to_json())
  records = []
  if os.path.exists(history):
    with open(history) as f:
      records = [json.loads(line) for line in f if line.strip()]
  elif os.path.exists(path):
    with open(path) as f:
      records = [{"from_step": 0, "config": json.load(f)}]
    _append(history, records[0])
  if not records or records[-1]["config"] != new:
    _append(history, {"from_step": step, "config": new})
  save_json(config, path)


def _append(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")


def load_json(path: str) -> ml_collections.ConfigDict:
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))
