"""Checkpoints chosen by evaluation: early stopping and the best step."""
import json

import jax
import pytest

from bigmodel_jax import checkpoints, metric_writer, runs, sample, selection, train
from bigmodel_jax.errors import NotFound

ONE = jax.devices()[:1]


def test_early_stopping_stops_at_the_right_evaluation_and_stays_stopped(
    tmp_path, tiny_config, capsys):
  # A learning rate of 0: val/loss never improves after the first eval.
  config = tiny_config(total_steps=20, eval_every_steps=2,
                       checkpoint_every_steps=100,
                       optimizer__learning_rate=0.0,
                       optimizer__min_learning_rate=0.0,
                       early_stopping__metric="val/loss",
                       early_stopping__patience=2)
  train.train(config, str(tmp_path), ONE)
  out = capsys.readouterr().out
  # Evals at 2 (the first: best), 4 and 6 (no improvement): stops at 6.
  assert ("early stopping at step 6: val/loss has not improved by more than "
          "0.0 for 2 evaluation(s); best") in out
  assert max(r["step"] for r in metric_writer.read_jsonl(str(tmp_path))) == 6
  assert checkpoints.steps(str(tmp_path)) == [6]  # Saved where it stopped.
  train.train(config, str(tmp_path), ONE)  # The same command again.
  assert "already stopped: early stopping at step 6" in capsys.readouterr().out
  assert checkpoints.steps(str(tmp_path)) == [6]


def test_the_best_checkpoint_survives_rotation_and_is_restored(
    tmp_path, tiny_config, capsys):
  workdir = str(tmp_path)
  # "max" of the loss: the best is an early step, which rotation
  # (keep_checkpoints=1) would otherwise delete.
  config = tiny_config(total_steps=8, eval_every_steps=1,
                       checkpoint_every_steps=4, keep_checkpoints=1,
                       keep_best__metric="val/loss", keep_best__mode="max")
  train.train(config, workdir, ONE)
  losses = {r["step"]: r["val/loss"] for r in metric_writer.read_jsonl(workdir)
            if "val/loss" in r}
  best = max(losses, key=losses.get)
  assert best < 8
  with open(tmp_path / "best.json") as f:
    assert json.load(f) == {"step": best, "metric": "val/loss",
                            "value": losses[best]}
  assert best in checkpoints.steps(workdir) and 8 in checkpoints.steps(workdir)
  assert runs.load(workdir, "best", devices=ONE).step == best
  sample.main(["--workdir", workdir, "--step", "best", "--max_new_tokens",
               "4", "--prompt", "A"])
  assert capsys.readouterr().out


def test_step_best_without_keep_best_is_one_line(tmp_path, tiny_config,
                                                  capsys):
  train.train(tiny_config(total_steps=2), str(tmp_path), ONE)
  with pytest.raises(NotFound, match="has no best checkpoint"):
    runs.load(str(tmp_path), "best")
  with pytest.raises(SystemExit):
    sample.main(["--workdir", str(tmp_path), "--step", "first"])
  assert "'first' is not a step number or 'best'" in capsys.readouterr().err


@pytest.mark.parametrize("metric, lower", [
    ("val/loss", True), ("val/perplexity", True), ("val/bits_per_byte", True),
    ("val/accuracy", False), ("test/f1", False)])
def test_a_metrics_direction_comes_from_its_name(metric, lower):
  assert selection.lower_is_better(metric) is lower
  assert selection.lower_is_better(metric, "max") is False
