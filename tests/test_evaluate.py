"""`python -m bigmodel_jax.evaluate`: a split as training evaluated it, a
text file in windows with bits per byte, and bad input as one line."""
import json
import math
import pathlib

import jax
import numpy as np
import optax
import pytest

from bigmodel_jax import config_loader, evaluate, metric_writer, runs, train

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.\n") * 3


@pytest.fixture(scope="module")
def char_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("char"))
  train.train(config_loader.load(
      str(EXPERIMENTS / "gpt_shakespeare_char.py") + ":cpu", {
          "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2,
          "input.batch_size": 8, "input.seq_len": 16, "total_steps": 3,
          "log_every_steps": 1, "eval_every_steps": 3,
          "checkpoint_every_steps": 3, "optimizer.warmup_steps": 1}), workdir)
  return workdir


def test_a_split_scores_as_training_evaluated_it(char_run, tmp_path, capsys):
  evaluate.main(["--workdir", char_run, "--split", "validation", "--json",
                 str(tmp_path / "out.json")])
  assert "bits_per_byte" in capsys.readouterr().out
  got = json.loads((tmp_path / "out.json").read_text())
  logged = [r for r in metric_writer.read_jsonl(char_run) if "val/loss" in r]
  assert got["step"] == 3
  assert got["loss"] == pytest.approx(logged[-1]["val/loss"], rel=1e-5)
  assert got["bits_per_byte"] == pytest.approx(
      got["loss"] / math.log(2), rel=1e-6)  # ASCII: a byte per token.


def test_a_text_file_is_scored_in_non_overlapping_windows(char_run, tmp_path):
  (tmp_path / "text.txt").write_text(TEXT)
  evaluate.main(["--workdir", char_run, "--text", str(tmp_path / "text.txt"),
                 "--tail", "0.5", "--batch_size", "3", "--json",
                 str(tmp_path / "out.json")])
  got = json.loads((tmp_path / "out.json").read_text())
  run = runs.load(char_run)
  tokens = run.tokenizer.encode(TEXT[int(len(TEXT) * 0.5):])
  windows = (len(tokens) - 1) // 16
  index = np.arange(windows)[:, None] * 16 + np.arange(16)
  logits = run.model.apply(jax.device_get(run.variables), tokens[index])
  losses = optax.softmax_cross_entropy_with_integer_labels(
      logits, tokens[index + 1])
  assert got["tokens"] == windows * 16 == got["bytes"]
  assert got["loss"] == pytest.approx(float(losses.mean()), rel=1e-5)
  assert got["bits_per_byte"] == pytest.approx(
      float(losses.sum()) / math.log(2) / (windows * 16), rel=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--text", "missing.txt"], "Cannot read --text missing.txt"),
    (["--text", "TEXT", "--tail", "0"], "--tail=0.0"),
    (["--text", "UNKNOWN"], "Characters not in the vocabulary"),
    (["--split", "no_such_split"], "no_such_split"),
])
def test_bad_input_is_one_line(char_run, tmp_path, capsys, args, message):
  (tmp_path / "text.txt").write_text(TEXT)
  (tmp_path / "unknown.txt").write_text("Speak, speak. \u00e9" * 20)
  args = [{"TEXT": str(tmp_path / "text.txt"),
           "UNKNOWN": str(tmp_path / "unknown.txt")}.get(a, a) for a in args]
  with pytest.raises(SystemExit) as exit_:
    evaluate.main(["--workdir", char_run, *args])
  assert exit_.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error:") and message in err[0]
