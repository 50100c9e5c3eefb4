"""The recurrent models next to the GPT character model: equal
parameters, equal segment length, equal steps, then equal wall time.

  python scripts/recurrent_vs_gpt.py --workdir runs/recurrent [--seed 0]

Trains `gpt_shakespeare_char.py:cpu` (also at the RNN recipes' learning
rate, 2e-3), `rnn_shakespeare_char.py:cpu` (LSTM), `:gru` and
`transformer_xl_char.py:cpu` (its 64-token segments with a memory of 64) for
2,000 steps each with the README's command (timed whole: start,
evaluations, checkpoints), then each of the others again with the steps
that fit the GPT's wall time (its schedule scaled to them).
Each run is an ordinary run in WORKDIR/NAME (a finished one is not
retrained; its time is kept in WORKDIR/NAME/wall.json). Prints a table of
parameters, steps, wall time, median training tokens/s, the TFDS
validation loss and the loss and bits per character on nanoGPT's
validation text (`evaluate --text input.txt --tail 0.1`), and writes
WORKDIR/recurrent_vs_gpt.png: validation loss against training seconds.
"""
import argparse
import json
import math
import os
import pathlib
import statistics
import subprocess
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigmodel_jax import metric_writer  # noqa: E402

TEXT = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
# name -> (experiment, overrides): GPT also at the recurrent recipes' rate.
RUNS = {"gpt": ("gpt_shakespeare_char.py:cpu", ()),
        "gpt, lr 2e-3": ("gpt_shakespeare_char.py:cpu",
                         ("--config.optimizer.learning_rate=2e-3",
                          "--config.optimizer.min_learning_rate=2e-4")),
        "lstm": ("rnn_shakespeare_char.py:cpu", ()),
        "gru": ("rnn_shakespeare_char.py:gru", ()),
        "transformer-xl": ("transformer_xl_char.py:cpu", ())}


def _module(name: str, *args) -> None:
  subprocess.run([sys.executable, "-m", f"bigmodel_jax.{name}", *args],
                 check=True, cwd=ROOT)


def train(workdir: str, run: tuple, seed: int, steps: int) -> float:
  """Trains (unless done) and returns the run's wall seconds."""
  record = os.path.join(workdir, "wall.json")
  experiment, overrides = run
  if not os.path.exists(record):
    start = time.perf_counter()
    _module("train", "--config", str(ROOT / "experiments" / experiment),
            "--workdir", workdir, f"--config.seed={seed}",
            f"--config.total_steps={steps}", *overrides)
    with open(record, "w") as f:
      json.dump({"seconds": time.perf_counter() - start}, f)
  with open(record) as f:
    return json.load(f)["seconds"]


def row(name: str, workdir: str, wall: float) -> dict:
  """The table's figures of a finished run."""
  scores = os.path.join(workdir, "text.json")
  if not os.path.exists(scores):
    _module("evaluate", "--workdir", workdir, "--text", str(TEXT), "--tail",
            "0.1", "--json", scores)
  with open(scores) as f:
    text = json.load(f)
  records = metric_writer.read_jsonl(workdir)
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  return {"run": name, "steps": config["total_steps"], "wall": wall,
          "tokens/s": statistics.median(r["train/tokens_per_sec"]
                                        for r in records
                                        if "train/tokens_per_sec" in r),
          "val": [r["val/loss"] for r in records if "val/loss" in r][-1],
          "text": text["loss"], "bpc": text["loss"] / math.log(2),
          "records": records}


def seconds_curve(records: list[dict]) -> tuple[list, list]:
  """(training seconds, val loss): logged step times over their interval."""
  elapsed, last, clock, curve = 0.0, 0, {}, ([], [])
  for r in records:
    if "train/step_time" in r and r["step"] > last:
      elapsed += r["train/step_time"] * (r["step"] - last)
      last = r["step"]
      clock[r["step"]] = elapsed
    if "val/loss" in r and r["step"] in clock:
      curve[0].append(clock[r["step"]])
      curve[1].append(r["val/loss"])
  return curve


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  rows = []
  for name, run in RUNS.items():
    workdir = os.path.join(args.workdir,
                           name.replace(", ", "_").replace(" ", ""))
    rows.append(row(name, workdir, train(workdir, run, args.seed, 2000)))
  budget = rows[0]["wall"]
  for name in ("lstm", "gru", "transformer-xl"):
    steps = round(2000 * budget / next(r["wall"] for r in rows
                                       if r["run"] == name))
    workdir = os.path.join(args.workdir, f"{name}_equal_wall")
    rows.append(row(f"{name}, GPT's wall time", workdir,
                    train(workdir, RUNS[name], args.seed, steps)))
  print("| run | steps | wall | tokens/s | val loss (TFDS validation) | "
        "loss on nanoGPT's validation text | bits per character |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['run']} | {r['steps']} | {r['wall']:.0f} s | "
          f"{r['tokens/s']:,.0f} | {r['val']:.3f} | {r['text']:.3f} | "
          f"{r['bpc']:.3f} |")
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for r in rows:
    ax.plot(*seconds_curve(r["records"]), marker=".", label=r["run"])
  ax.set_xlabel("training seconds (logged step times)")
  ax.set_ylabel("val/loss")
  ax.set_title("Character models at ~0.8M parameters, segments of 64")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  path = os.path.join(args.workdir, "recurrent_vs_gpt.png")
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
