"""Sweeps: axes helpers, dry run, SLURM script, a real two-point sweep."""
import csv
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bigmodel_jax import config_loader, sweep
from bigmodel_jax.data import sklearn_digits
from bigmodel_jax.dataio.folds import fold_split, stratified_folds
from conftest import EXPERIMENT, TINY

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def test_product_and_zip():
  assert sweep.product({"a": [1, 2], "b": ["x", "y"]}) == [
      {"a": 1, "b": "x"}, {"a": 1, "b": "y"},
      {"a": 2, "b": "x"}, {"a": 2, "b": "y"}]
  assert sweep.zip_axes({"a": [1, 2], "b": [3, 4]}) == [
      {"a": 1, "b": 3}, {"a": 2, "b": 4}]
  with pytest.raises(ValueError, match="equal lengths"):
    sweep.zip_axes({"a": [1, 2], "b": [3]})


def test_dry_run_prints_one_command_per_point(capsys):
  sweep.main(["--config", EXPERIMENT + ":cpu", "--workdir", "runs/x",
              "--dry-run", "--config.total_steps=10"])
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 9
  assert "--workdir runs/x/00_learning_rate=0.0003_num_layers=2" in lines[0]
  assert "--config.total_steps=10" in lines[0]
  assert "--config.model.num_layers=6" in lines[-1]


def test_an_unknown_key_fails_before_anything_runs(tmp_path, capsys):
  with pytest.raises(SystemExit) as e:
    sweep.main(["--config", EXPERIMENT + ":cpu", "--workdir", str(tmp_path),
                "--config.optimizer.learning_rat=1"])
  assert e.value.code == 2
  assert "Did you mean optimizer.learning_rate" in capsys.readouterr().err
  assert not os.listdir(tmp_path)


def test_slurm_writes_a_job_array(tmp_path):
  sweep.main(["--config", EXPERIMENT + ":cpu", "--workdir", str(tmp_path),
              "--slurm"])
  script = (tmp_path / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-8" in script
  assert script.count("bigmodel_jax.train") == 9
  subprocess.run(["bash", "-n", str(tmp_path / "sweep.sbatch")], check=True)


def _two_point_experiment(tmp_path):
  """The GPT experiment with a sweep of one good and one failing point."""
  path = tmp_path / "two_points.py"
  path.write_text(
      f"exec(open({EXPERIMENT!r}).read())\n"
      "def get_sweep(arg):\n"
      "  return [{'optimizer.learning_rate': 1e-2},\n"
      "          {'input.dataset': 'no_such_set'}]  # Fails: no data.\n")
  return str(path)


@pytest.mark.slow
def test_a_sweep_runs_reports_failures_and_resumes(tmp_path):
  workdir = tmp_path / "sweep"
  args = [sys.executable, "-m", "bigmodel_jax.sweep", "--config",
          _two_point_experiment(tmp_path) + ":cpu", "--workdir",
          str(workdir)] + [f"--config.{k}={v}" for k, v in TINY.items()]
  first = subprocess.run(args, capture_output=True, text=True)
  assert first.returncode == 1, first.stdout + first.stderr
  assert "01_dataset=no_such_set: failed (exit 2)" in first.stdout
  assert "error: TFDS dataset 'no_such_set' (split 'train') is not prepared" \
      in (workdir / "01_dataset=no_such_set" / "train.log").read_text()
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["point"] for r in rows] == ["00_learning_rate=0.01",
                                        "01_dataset=no_such_set"]
  assert rows[0]["steps"] == "6" and float(rows[0]["final val/loss"]) < 4.5
  assert float(rows[0]["wall s"]) > 0
  assert "| 00_learning_rate=0.01 |" in (workdir / "results.md").read_text()
  assert (workdir / "plot_val_loss.png").stat().st_size > 1000
  again = subprocess.run(args, capture_output=True, text=True)
  assert "1 already done, 1 to run" in again.stdout


@pytest.mark.slow
def test_a_signal_to_a_sweep_saves_its_running_points(tmp_path):
  workdir = tmp_path / "sweep"
  overrides = {**TINY, "total_steps": 2000, "checkpoint_every_steps": 5000}
  sweeping = subprocess.Popen(
      [sys.executable, "-m", "bigmodel_jax.sweep", "--config",
       _two_point_experiment(tmp_path) + ":cpu", "--workdir", str(workdir)] +
      [f"--config.{k}={v}" for k, v in overrides.items()],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  log = workdir / "00_learning_rate=0.01" / "train.log"
  deadline = time.time() + 120
  while not (log.exists() and "step 3/2000" in log.read_text()):
    assert time.time() < deadline and sweeping.poll() is None
    time.sleep(0.2)
  sweeping.send_signal(signal.SIGTERM)
  out, err = sweeping.communicate(timeout=120)
  assert sweeping.returncode == 75, out + err
  assert "00_learning_rate=0.01: interrupted" in out
  assert "2 point(s) interrupted or not started: run the same command" in out
  assert not (workdir / "01_dataset=no_such_set").exists()  # Not started.
  saved = os.listdir(workdir / "00_learning_rate=0.01" / "checkpoints")
  assert len(saved) == 1 and 3 <= int(saved[0]) < 2000
  assert "interrupted: SIGTERM received" in log.read_text()


def test_folds_are_disjoint_stratified_and_cover_the_split():
  labels = np.random.default_rng(0).integers(0, 3, 1000)
  folds = stratified_folds(labels, 5, seed=0)
  assert sorted(np.concatenate(folds).tolist()) == list(range(1000))
  for c in range(3):
    counts = [int((labels[f] == c).sum()) for f in folds]
    assert max(counts) - min(counts) <= 1  # Each class in proportion.
  train, held_out = fold_split(labels, 5, 2, seed=0)
  np.testing.assert_array_equal(held_out, folds[2])
  assert not set(train) & set(held_out) and len(train) + len(held_out) == 1000


def test_an_image_input_cross_validates_its_train_split_only():
  config = config_loader.load(str(EXPERIMENTS / "vit_digits.py"),
                              {"input.num_folds": 4, "input.fold": 1})
  folded = sklearn_digits.Input(config.input, seed=0, process_index=0,
                                process_count=1)
  whole = sklearn_digits.Input(config_loader.load(
      str(EXPERIMENTS / "vit_digits.py")).input, seed=0, process_index=0,
                               process_count=1)
  train, held_out = folded.sources["train"], folded.sources["test"]
  assert len(train) + len(held_out) == len(whole.sources["train"])
  assert set(train.indices).isdisjoint(held_out.indices)
  assert 0.2 < len(held_out) / len(whole.sources["train"]) < 0.3
  assert len(whole.sources["test"]) not in (len(held_out), len(train))


def test_cross_validation_reports_mean_std_and_a_95_interval():
  rows = [{"point": str(i), "final val/accuracy": v, "steps": 5}
          for i, v in enumerate([0.8, 0.9, 0.7])]
  lines = sweep.cross_validation(rows)
  assert "| val/accuracy | 0.8000 | 0.1000 | [0.5516, 1.0484] | 3 |" in lines


def test_folds_need_a_classification_input(capsys):
  sweep.main(["--config", str(EXPERIMENTS / "vit_digits.py"), "--workdir",
              "runs/x", "--folds", "3", "--dry-run"])
  commands = capsys.readouterr().out.splitlines()
  assert [c.split()[-1] for c in commands] == [
      "--config.input.fold=0", "--config.input.fold=1",
      "--config.input.fold=2"]
  with pytest.raises(SystemExit):
    sweep.main(["--config", EXPERIMENT + ":cpu", "--workdir", "runs/x",
                "--folds", "3"])
  assert "has no input.num_folds" in capsys.readouterr().err
