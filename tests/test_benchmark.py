"""scripts/benchmark.py: the accelerator suite runs end to end (shrunk)."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_suite_writes_one_row_per_model_with_the_device(tmp_path):
  out = tmp_path / "suite.md"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  run = subprocess.run(
      [sys.executable, "scripts/benchmark.py", "--suite", "gpu", "--tiny",
       "--steps", "1", "--warmup_steps", "0", "--out", str(out)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  table = out.read_text()
  assert table.startswith("Measured on 1x cpu")
  rows = re.findall(r"^\| (GPT-2 124M|llama-1B FSDP|ViT-B/16|BERT-base)\b"
                    r".*\| ([\d,]+) (tokens|images|sequences) \|", table, re.M)
  assert [(name, unit) for name, _, unit in rows] == [
      ("GPT-2 124M", "tokens"), ("llama-1B FSDP", "tokens"),
      ("ViT-B/16", "images"), ("BERT-base", "sequences")]
  assert all(int(n.replace(",", "")) > 0 for _, n, _ in rows)
  gpt_row = table.splitlines()[4]  # Every remat policy tried, the best kept.
  assert all(f"{p}: " in gpt_row for p in
             ("none", "minimal", "dots_saveable", "full"))
