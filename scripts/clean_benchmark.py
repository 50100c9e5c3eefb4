"""Throughput of `python -m bigmodel_jax.clean` on real text with real
overlaps: documents are windows of `--lines` lines of tiny Shakespeare at
random offsets, so windows that overlap are near duplicates and some are
exact ones.

  python scripts/clean_benchmark.py --docs 20000 --processes 1,2

Prints a markdown table (docs/trust.md): documents, MB, seconds,
documents/s, MB/s, kept, and what was removed by which rule.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from bigmodel_jax import clean  # noqa: E402

TEXT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "data", "tinyshakespeare",
    "input.txt")


def corpus(path: str, docs: int, lines: int, seed: int = 0) -> None:
  with open(TEXT) as f:
    text = f.read().splitlines()
  rng = np.random.default_rng(seed)
  starts = rng.integers(0, len(text) - lines, docs)
  with open(path, "w") as f:
    for start in starts:
      f.write(json.dumps({"text": "\n".join(text[start:start + lines])}) +
              "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--docs", type=int, default=20000)
  parser.add_argument("--lines", type=int, default=60)
  parser.add_argument("--processes", default="1,2")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "windows.jsonl")
    corpus(path, args.docs, args.lines)
    megabytes = os.path.getsize(path) / 1e6
    print("| processes | documents | MB | seconds | documents/s | MB/s | kept "
          "| removed |\n|---|---|---|---|---|---|---|---|")
    for processes in map(int, args.processes.split(",")):
      settings = clean.defaults()
      settings.processes = processes
      out = os.path.join(folder, f"out{processes}")
      os.makedirs(out)
      began = time.perf_counter()
      report = clean.clean([path], out, settings)
      seconds = time.perf_counter() - began
      print(f"| {processes} | {report['documents']:,} | {megabytes:.1f} | "
            f"{seconds:.1f} | {report['documents'] / seconds:,.0f} | "
            f"{megabytes / seconds:.2f} | {report['kept']:,} | " +
            ", ".join(f"{k} {v:,}" for k, v in report["removed"].items()) +
            " |", flush=True)


if __name__ == "__main__":
  main()
