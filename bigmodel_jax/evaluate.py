"""Scores a run on a split of its data or, for language models, a text file.

  python -m bigmodel_jax.evaluate --workdir runs/shakespeare --split test
  python -m bigmodel_jax.evaluate --workdir runs/shakespeare \\
      --text ../shared/data/tinyshakespeare/input.txt --tail 0.1

Prints the task's metrics (loss, accuracy, perplexity, ...) and, for
language models, bits per byte: the summed loss in bits over the UTF-8
bytes of the predicted text, comparable between tokenizers (characters,
BPE). `--text` cuts the file (or its last `--tail` fraction, nanoGPT's
validation text for 0.1) into non-overlapping windows of the run's sequence
length; each token is predicted from the tokens before it in its window.
The variables are read into their shards on all devices; progress and an
ETA are printed for long evaluations. `--json FILE` writes the figures.
`--eval KEY` also runs the run's evaluator `config.evals.KEY` on the split
(e.g. a T5 run's BLEU and ROUGE of its decoded texts:
`--split test --eval generated`).
"""
import argparse
import json
import math
import os
import types

import jax
import numpy as np
from jax.experimental import multihost_utils

from bigmodel_jax import grouped, perf, registry, runs, steps
from bigmodel_jax.dataio.common import eval_positions, process_rows
from bigmodel_jax.errors import ConfigError, NotFound, entrypoint


def text_batches(run, text: str, batch_size: int):
  """(number of batches, batches) of non-overlapping windows of `text`:
  inputs, next-token targets and weights (0 on padding rows)."""
  tokens = run.tokenizer.encode(text)
  length = run.config.input.seq_len
  count = (len(tokens) - 1) // length
  if count < 1:
    raise ConfigError(f"The text has {len(tokens)} tokens: too few for one "
                      f"window of {length} + 1.")
  total = -(-count // batch_size)
  rows = process_rows(batch_size, jax.process_index(), jax.process_count())

  def batches():
    for windows, real in eval_positions(count, batch_size, rows):
      index = (windows * length)[:, None] + np.arange(length)
      yield {"inputs": tokens[index], "targets": tokens[index + 1],
             "weights": np.repeat(real[:, None], length, axis=1)}
  return total, batches()


# Input config keys that name a tokenizer file (BPE's, WordPiece's).
TOKENIZER_KEYS = ("tokenizer_file", "vocab_file")


def run_input(run, process_index=None, process_count=None):
  """The run's input (this process's share), read with the run's saved
  tokenizer: never one trained anew, whose ids could differ (the
  `tokenizers` trainers are not deterministic)."""
  config = run.config.input
  saved = os.path.join(run.workdir, "tokenizer.json")
  key = next((k for k in TOKENIZER_KEYS if k in config), None)
  if key and os.path.exists(saved):
    config = config.copy_and_resolve_references()
    config[key] = saved
  return registry.get("data", config.name).Input(
      config, seed=run.config.seed,
      process_index=(jax.process_index() if process_index is None
                     else process_index),
      process_count=(jax.process_count() if process_count is None
                     else process_count))


def split_batches(run, split: str):
  """(number of batches, batches) of one process's share of a split."""
  data = run_input(run)
  return data.num_eval_batches(split), data.eval_batches(split)


def _bytes(token_bytes: np.ndarray, batch: dict) -> int:
  """UTF-8 bytes of the batch's weighted targets."""
  weights = batch.get("weights", np.ones(batch["targets"].shape))
  return int(np.sum(token_bytes[np.asarray(batch["targets"])] *
                    (np.asarray(weights) > 0)))


def evaluate(run, total: int, batches, groups=None) -> dict:
  """The task's summary metrics over the batches (and, for runs that can
  score text, "bits_per_byte" and "bytes"; with the names of the batches'
  `groups`, each group's metrics and the gaps: `grouped.py`)."""
  task = run.task
  step = steps.jit_eval_step(task.eval_step(run.model), run.variables,
                             run.layout)
  count_bytes = "score_text" in run.capabilities
  token_bytes = run.tokenizer.token_bytes() if count_bytes else None
  num_bytes = []

  def counted(batches):
    for batch in perf.progress(batches, total, "eval batch"):
      num_bytes.append(_bytes(token_bytes, batch) if count_bytes else 0)
      yield batch

  totals = steps.evaluate(step, run.variables, counted(batches), run.layout)
  if totals is None:
    raise NotFound("Nothing to evaluate: the split has no batches.")
  by_group = grouped.per_group(task, totals, groups)
  metrics = {**task.summarize(totals), **grouped.summarize(by_group)}
  if by_group and jax.process_index() == 0:
    print("Per group:\n" + grouped.table(by_group))
  if count_bytes:
    metrics["bytes"] = int(np.sum(multihost_utils.process_allgather(
        np.array(sum(num_bytes)))))
    metrics["bits_per_byte"] = (float(totals["loss"]) / math.log(2) /
                                metrics["bytes"])
  metrics["tokens" if "next_token" in run.parts else "examples"] = float(
      totals["count"])
  return metrics


def run_evaluator(run, data, key: str, split: str) -> dict:
  """KEY/NAME scalars of the run's evaluator `config.evals.KEY` on
  `split`, given the run as its experiment (config, data, family, task,
  model)."""
  evals = run.config.get("evals") or {}
  if key not in evals:
    raise ConfigError(f"--eval {key}: the run has no config.evals.{key} "
                      f"(it has {sorted(evals) or 'none'}).")
  block = evals[key].copy_and_resolve_references()
  block.split = split
  exp = types.SimpleNamespace(config=run.config, data=data, family=run.family,
                              task=run.task, model=run.model)
  scalars, _ = registry.get("evaluators", block.get("name") or key
                            ).Evaluator(block, exp)(run.variables)
  return {f"{key}/{name}": value for name, value in scalars.items()}


@entrypoint
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  where = parser.add_mutually_exclusive_group(required=True)
  where.add_argument("--split", help="a split of the run's data")
  where.add_argument("--text", help="a UTF-8 text file (language models)")
  parser.add_argument("--tail", type=float, default=1.0,
                      help="--text: score its last fraction (0, 1]")
  parser.add_argument("--batch_size", type=int, default=None,
                      help="--text windows per batch (default: the run's)")
  runs.add_step_arg(parser)
  parser.add_argument("--json", help="also write the figures to this file")
  parser.add_argument("--eval", action="append", default=[], metavar="KEY",
                      help="also run config.evals.KEY on --split")
  args = parser.parse_args(argv)
  if not 0 < args.tail <= 1:
    raise ConfigError(f"--tail={args.tail}: it must be in (0, 1].")
  if args.eval and not args.split:
    raise ConfigError("--eval runs an evaluator on a --split.")

  run = runs.load(args.workdir, args.step)
  if args.text:
    run.require("score_text")
    try:
      with open(args.text, encoding="utf-8") as f:
        text = f.read()
    except (OSError, UnicodeDecodeError) as e:
      raise NotFound(f"Cannot read --text {args.text}: {e}.") from None
    text = text[int(len(text) * (1 - args.tail)):]
    batch_size = args.batch_size or run.config.input.batch_size
    shards = run.layout.num_batch_shards()
    batch_size = -(-batch_size // shards) * shards
    total, batches = text_batches(run, text, batch_size)
  else:
    data = run_input(run)
    total, batches = data.num_eval_batches(args.split), data.eval_batches(
        args.split)
  metrics = evaluate(run, total, batches,
                     None if args.text else data.group_names(args.split))
  for key in args.eval:
    metrics.update(run_evaluator(run, data, key, args.split))
  print(f"{args.workdir} step {run.step} on "
        f"{args.text or 'split ' + args.split}: " +
        " | ".join(f"{k} {v:,.0f}" if k in ("bytes", "tokens", "examples")
                   else f"{k} {v:.4f}" for k, v in metrics.items()
                   if not k.startswith("group/")))
  if args.json and jax.process_index() == 0:
    with open(args.json, "w") as f:
      json.dump({"workdir": args.workdir, "step": run.step,
                 "on": args.text or args.split, **metrics}, f, indent=2)


if __name__ == "__main__":
  main()
