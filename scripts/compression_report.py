"""Size, speed and quality of every compression of a recipe, in one table.

  python scripts/compression_report.py --recipe gpt --workdir runs/compression
  python scripts/compression_report.py --recipe vit --workdir runs/compression
  python scripts/compression_report.py --recipe bert --workdir runs/compression

For a recipe (gpt: `gpt_shakespeare_char.py:cpu`; vit: `vit_digits.py:cpu`;
bert: `bert_finetune.py:full` on rt-polarity) it trains the model (or
resumes it: WORKDIR/RECIPE/teacher), compresses it with each method
(`python -m bigmodel_jax.compress`), fine-tunes it quantization-aware
(int4, then compressed to int4) and with gradual pruning to
50% and 90% (`config.pruning`), trains a student half as deep twice,
distilled from the model and from scratch, and measures each variant in a
fresh process: parameters (nonzero), checkpoint size on disk (parameters
only), bytes of the loaded variables, forward latency at batch 1 and 32 (median of 20 after compiling),
peak RSS of the process once it has loaded the run and run those batches
(before the evaluation reads data), and the recipe's quality on its
evaluation split. Prints the
markdown table and writes it to WORKDIR/RECIPE/report.md. Everything runs
on the machine at hand; nothing is downloaded.
"""
import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from flax import traverse_util

from bigmodel_jax import (compress, config_loader, evaluate, quantization,
                          registry, runs, train)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {  # config, student overrides, fine-tune steps, quality columns.
    "gpt": ("gpt_shakespeare_char.py:cpu", {"model.num_layers": 2}, 500,
            ("loss",)),
    "vit": ("vit_digits.py:cpu", {"model.num_layers": 2}, 500,
            ("loss", "accuracy", "macro_f1")),
    "bert": ("bert_finetune.py:full", {"model.num_layers": 3,
                                       "init_from.hf_dir": None}, 150,
             ("loss", "accuracy", "macro_f1")),
}
VARIANTS = [  # (name, compress arguments)
    ("float32", ["--method", "float32"]),
    ("bfloat16", ["--method", "bf16"]),
    ("int8", ["--method", "int8"]),
    ("int4", ["--method", "int4"]),
    ("int8 w + int8 act", ["--method", "w8a8"]),
    ("50% sparse", ["--method", "sparse", "--sparsity", "0.5"]),
    ("90% sparse", ["--method", "sparse", "--sparsity", "0.9"]),
    ("2:4 sparse", ["--method", "sparse", "--pattern", "2:4"]),
    ("half the heads", ["--method", "heads", "--keep_heads", "0.5"]),
]


def _median_ms(fn, *args, repeats: int = 20) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return 1000 * float(np.median(times))


def measure(workdir: str) -> dict:
  """One variant's figures (run in its own process for its peak RSS)."""
  run = runs.load(workdir, devices=jax.devices()[:1])
  config = run.config.input
  flat = traverse_util.flatten_dict(quantization.to_pure(run.params))
  weights = [x for k, x in flat.items() if k[-2:] != ("array", "scale")]
  figures = {"parameters": sum(x.size for x in weights),
             "memory_mib": sum(x.nbytes for x in jax.tree.leaves(
                 run.variables)) / 2**20,
             "nonzero": sum(int(jnp.count_nonzero(x)) for x in weights),
             "disk_mib": compress.disk_bytes(
                 os.path.join(workdir, "checkpoints")) / 2**20}
  example = registry.get("data", config.name).batch_spec(config)["inputs"]
  forward = jax.jit(lambda v, x: run.model.apply(v, x))
  for batch in (1, 32):
    inputs = jnp.zeros((batch, *example.shape[1:]), example.dtype)
    figures[f"ms_b{batch}"] = _median_ms(forward, run.variables, inputs)
  figures["peak_rss_mib"] = resource.getrusage(  # Loaded and serving.
      resource.RUSAGE_SELF).ru_maxrss / 1024
  total, batches = evaluate.split_batches(run, config.eval_split)
  figures.update(evaluate.evaluate(run, total, batches))
  return figures


def _measured(workdir: str) -> dict:
  out = subprocess.run(
      [sys.executable, __file__, "--measure", workdir], check=True,
      capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def _config(recipe: str, overrides: dict):
  return config_loader.load(os.path.join(ROOT, "experiments",
                                         RECIPES[recipe][0]), overrides)


def report(recipe: str, root: str) -> str:
  root = os.path.join(root, recipe)
  teacher = os.path.join(root, "teacher")
  train.train(_config(recipe, {}), teacher)  # Returns at once when done.
  rows = []
  for name, args in VARIANTS:
    out = os.path.join(root, re.sub(r"[^a-z0-9]+", "_", name.lower()))
    if not os.path.isdir(out):
      try:
        compress.main(["--workdir", teacher, "--out", out, *args])
      except SystemExit:  # E.g. a family without heads: say so, go on.
        rows.append((name, None))
        continue
    rows.append((name, out))
  _, students, steps, columns = RECIPES[recipe]
  base = _config(recipe, {})
  fine_tune = {"init_from.workdir": teacher, "init_from.hf_dir": None,
               "total_steps": steps,
               "optimizer.learning_rate": base.optimizer.learning_rate / 3,
               "optimizer.warmup_steps": steps // 10}
  trained = [  # (row, directory, overrides, compress method)
      ("int4, QAT fine-tune", "qat_int4",
       {**fine_tune, "quantization.method": "int4"}, "int4")] + [
      (f"{p}% sparse, gradual fine-tune", f"gradual_{p}", {
          **fine_tune, "pruning.sparsity": p / 100,
          "pruning.end_step": steps * 3 // 4, "pruning.frequency": 25},
       "float32") for p in (50, 90)] + [
      ("student, distilled", "distilled", {
          **students, "distill.teacher_workdir": teacher}, "float32"),
      ("student, from scratch", "scratch", students, "float32")]
  for name, directory, overrides, method in trained:
    path = os.path.join(root, directory)
    train.train(_config(recipe, overrides), path)
    out = f"{path}_{method}"
    if not os.path.isdir(out):
      compress.main(["--workdir", path, "--out", out, "--method", method])
    rows.append((name, out))
  lines = ["| variant | parameters (nonzero) | disk MiB | in memory MiB | "
           "ms b=1 | ms b=32 | peak RSS MiB | " + " | ".join(columns) + " |",
           "|---" * (7 + len(columns)) + "|"]
  for name, out in rows:
    if out is None:
      lines.append(f"| {name} | not applicable |" + " |" * (5 + len(columns)))
      continue
    f = _measured(out)
    lines.append(
        f"| {name} | {f['parameters']:,} ({f['nonzero']:,}) | "
        f"{f['disk_mib']:.2f} | {f['memory_mib']:.2f} | {f['ms_b1']:.2f} | "
        f"{f['ms_b32']:.2f} | "
        f"{f['peak_rss_mib']:.0f} | " +
        " | ".join(f"{f[c]:.4f}" for c in columns) + " |")
  table = "\n".join(lines)
  with open(os.path.join(root, "report.md"), "w") as f:
    f.write(f"# {recipe}: {RECIPES[recipe][0]}\n\n{table}\n")
  return table


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--recipe", choices=sorted(RECIPES))
  parser.add_argument("--workdir", default="runs/compression")
  parser.add_argument("--measure", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.measure:
    print(json.dumps(measure(args.measure)))
    return
  if not args.recipe:
    parser.error("--recipe is required")
  print(report(args.recipe, args.workdir))


if __name__ == "__main__":
  main()
