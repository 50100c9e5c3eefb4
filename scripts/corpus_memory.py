"""Host memory of GPT training on corpora of growing size: it must stay flat.

  python scripts/corpus_memory.py --sizes_gb 0.2,2 --dir /tmp/corpus_memory

For each size, writes a JSONL corpus of that many bytes (documents of 20 to
200 consecutive lines of tiny_shakespeare from seeded random places), then
runs `python -m bigmodel_jax.train --config experiments/gpt_text.py:cpu` on
it with a BPE trained once beforehand: the run tokenizes the corpus into a
token store and trains `--steps` steps. The run's memory is sampled every
0.2 s: its own (anonymous) memory, and the pages of the memory-mapped store
it has touched (file-backed, which the kernel can drop at any time). Prints
a table and plots the run's own memory over time. A store built before
(`--dir`/stores_SIZE) is reused: only training is measured then.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

import numpy as np

from bigmodel_jax import plots
from bigmodel_jax.dataio import tfds_source
from bigmodel_jax.dataio.bpe import BPE

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def write_corpus(path: str, size: int, lines: list[str], seed: int = 0):
  """A JSONL file of `size` bytes of documents cut from `lines`."""
  rng = np.random.default_rng(seed)
  written = 0
  with open(path, "w", encoding="utf-8") as f:
    while written < size:
      start, length = rng.integers(len(lines)), rng.integers(20, 200)
      record = json.dumps({"text": "\n".join(lines[start:start + length])})
      written += f.write(record + "\n")


def rss_mb(pid: int) -> tuple[float, float]:
  """(anonymous, file-backed) resident memory of a process and its
  children, in MB."""
  totals = np.zeros(2)
  for p in [pid] + _children(pid):
    try:
      with open(f"/proc/{p}/status") as f:
        status = f.read()
      totals += [int(re.search(rf"{key}:\s+(\d+)", status).group(1))
                 for key in ("RssAnon", "RssFile")]
    except (OSError, AttributeError):
      pass
  return tuple(totals / 1024)


def _children(pid: int) -> list[int]:
  try:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
      return [int(c) for c in f.read().split()]
  except OSError:
    return []


def run(args, size_gb: float, tokenizer: str, validation: str) -> dict:
  """Trains on a corpus of `size_gb`; RSS samples and the printed lines."""
  corpus = os.path.join(args.dir, f"corpus_{size_gb}gb.jsonl")
  if not os.path.exists(corpus):
    print(f"writing {corpus}", flush=True)
    write_corpus(corpus, int(size_gb * 1e9), _lines())
  workdir = os.path.join(args.dir, f"run_{size_gb}gb")
  stores = os.path.join(args.dir, f"stores_{size_gb}")
  subprocess.run(["rm", "-rf", workdir], check=True)
  command = [sys.executable, "-m", "bigmodel_jax.train", "--config",
             os.path.join(ROOT, "experiments", "gpt_text.py:cpu"),
             "--workdir", workdir,
             f"--config.input.files.train={corpus}",
             f"--config.input.files.validation={validation}",
             f"--config.input.tokenizer_file={tokenizer}",
             f"--config.input.store_dir={stores}",
             f"--config.total_steps={args.steps}",
             f"--config.eval_every_steps={args.steps}",
             f"--config.checkpoint_every_steps={args.steps}"]
  process = subprocess.Popen(command, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, cwd=ROOT)
  samples, lines, phase = [], [], "tokenizing"
  start = time.perf_counter()
  os.set_blocking(process.stdout.fileno(), False)
  while process.poll() is None:
    for line in iter(process.stdout.readline, ""):
      lines.append(line)
      print(f"  {line}", end="", flush=True)
      if line.startswith("starting from step"):
        phase = "training"
    samples.append((time.perf_counter() - start, rss_mb(process.pid), phase))
    time.sleep(0.2)
  lines += process.stdout.read().splitlines(keepends=True)
  if process.returncode:
    sys.exit(f"training failed:\n{''.join(lines[-20:])}")
  rates = [float(m.group(1)) for line in lines
           if (m := re.search(r"tokenizing train: .*\(([\d.]+) MB/s\)", line))]
  train_store = max((os.path.join(stores, d) for d in os.listdir(stores)),
                    key=lambda d: os.path.getsize(os.path.join(d, "tokens.bin")))
  with open(os.path.join(train_store, "done.json")) as f:
    store = json.load(f)
  return {"size_gb": size_gb, "samples": samples,
          "rate": f"{rates[-1]:.2f} MB/s" if rates else "store reused",
          "tokens": store["tokens"], "seconds": samples[-1][0]}


def _lines() -> list[str]:
  return tfds_source.load_text("tiny_shakespeare", "train", None).split("\n")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--sizes_gb", default="0.2,2")
  parser.add_argument("--dir", default="/tmp/corpus_memory")
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--plot", default=os.path.join(
      ROOT, "docs", "curves", "corpus_memory.png"))
  args = parser.parse_args()
  os.makedirs(args.dir, exist_ok=True)
  tokenizer = os.path.join(args.dir, "tokenizer.json")
  BPE.train(_lines(), 1024, show_progress=False).save(tokenizer)
  validation = os.path.join(args.dir, "validation.jsonl")
  write_corpus(validation, 200_000, _lines(), seed=1)
  results = [run(args, float(s), tokenizer, validation)
             for s in args.sizes_gb.split(",")]
  print("\n| corpus | tokens | tokenizing | own memory, peak tokenizing | "
        "own memory, peak training | + touched store pages (file-backed) | "
        "wall |\n|---|---|---|---|---|---|---|")
  for r in results:
    peak = {phase: max((m for _, (m, _), p in r["samples"] if p == phase),
                       default=0.0) for phase in ("tokenizing", "training")}
    mapped = max(f for _, (_, f), p in r["samples"] if p == "training")
    print(f"| {r['size_gb']:g} GB | {r['tokens'] / 1e6:,.0f}M | {r['rate']} | "
          f"{peak['tokenizing']:,.0f} MB | {peak['training']:,.0f} MB | "
          f"{mapped:,.0f} MB | {r['seconds'] / 60:.1f} min |")
  plots.plot({f"{r['size_gb']:g} GB corpus": [
      {"step": t, "own (anonymous) memory, MB": m}
      for t, (m, _), _ in r["samples"]] for r in results},
             "own (anonymous) memory, MB", args.plot,
             "GPT on a token store: host memory, tokenizing then training",
             xlabel="seconds")
  print(f"wrote {args.plot}")


if __name__ == "__main__":
  main()
