"""A trained run, loaded for inference: config, model, parameters, tokenizer.

  run = runs.load("runs/shakespeare")        # newest checkpoint
  logits = run.model.apply(run.variables, tokens)

A compressed run (`compress.py`) comes back as its quantized model and
weights. Only the model's variables are restored (`checkpoints.restore_variables`:
parameters and e.g. BatchNorm statistics), straight
into their shards on a mesh over the devices at hand (`mesh` overrides the
run's), laid out by the run's own sharding rules: never the optimizer
moments, never an unsharded copy. Sampling, evaluation and serving use it.
"""
import argparse
import dataclasses
import os
from typing import Any

import ml_collections

from bigmodel_jax import (checkpoints, config_loader, experiment,
                          quantization, registry, state)
from bigmodel_jax.data import chat
from bigmodel_jax.errors import NotFound


@dataclasses.dataclass
class Run:
  workdir: str
  config: ml_collections.ConfigDict
  family: Any  # contracts.ModelFamily.
  model: Any
  variables: dict  # "params" and the model's other collections.
  step: int
  layout: Any  # sharding.Layout: the mesh the variables are sharded over.
  tokenizer: Any  # None for inputs without text.
  chat_template: Any = None  # data.chat.Template of conversation runs.

  @property
  def params(self):
    return self.variables["params"]


def load(workdir: str, step: int | None = None, *, mesh: dict | None = None,
         devices=None) -> Run:
  """The run in `workdir` at its newest (or given) checkpoint."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise NotFound(f"{workdir!r} is not a training run: it has no "
                            "config.json.")
  family = registry.get("models", config_loader.load_json(path).model.name)
  config = experiment.resolve(config_loader.load_json(path), family)
  config.mesh = mesh or {"data": -1}
  layout = experiment.layout(config, devices)
  data_module = registry.get("data", config.input.name)
  example = data_module.batch_spec(config.input)["inputs"]
  model = quantization.configured(family.make(config.model), config, example)
  target = state.abstract_variables(model, layout, example)
  variables, step = checkpoints.restore_variables(
      workdir, quantization.to_pure(target), step)
  variables = quantization.from_pure(variables, target)
  tokenizer = (data_module.load_tokenizer(workdir)
               if data_module.load_tokenizer is not None else None)
  return Run(workdir, config, family, model, variables, step, layout,
             tokenizer, chat.load(workdir))


def arg_parser(doc: str) -> argparse.ArgumentParser:
  """The parser of a command that turns a run into a new directory:
  --workdir, --out, --step."""
  parser = argparse.ArgumentParser(
      description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="a new directory")
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: newest)")
  return parser
