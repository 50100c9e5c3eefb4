"""Optuna search: it finds optima, prunes, shares studies between workers,
runs trials as training runs, resumes a dead worker's trial, exports the
best overrides."""
import csv
import json
import math
import os
import re
import subprocess
import sys
import time

import optuna
import pytest

from bigmodel_jax import config_loader, search, sweep, trials
from conftest import EXPERIMENT, TINY

SPACE = {"optimizer.learning_rate": search.floats(1e-5, 1e-1, log=True),
         "optimizer.weight_decay": search.floats(0.0, 1.0)}


def _bowl(overrides, report):
  """A synthetic objective: least at learning rate 1e-3, weight decay 0.3."""
  return ((math.log10(overrides["optimizer.learning_rate"]) + 3) ** 2 +
          (overrides["optimizer.weight_decay"] - 0.3) ** 2)


def test_tpe_finds_the_optimum_region_and_beats_random(tmp_path):
  best = {}
  for sampler in ("tpe", "random"):
    study = search.Search(SPACE, str(tmp_path / sampler), sampler=sampler,
                          metric="val/loss", seed=0)
    study.optimize(_bowl, trials=40)
    best[sampler] = study.best()
  assert abs(math.log10(best["tpe"].params["optimizer.learning_rate"]) + 3
             ) < 0.5
  assert abs(best["tpe"].params["optimizer.weight_decay"] - 0.3) < 0.25
  assert best["tpe"].value <= best["random"].value
  assert os.path.exists(tmp_path / "tpe" / "study.db")
  again = search.Search(SPACE, str(tmp_path / "tpe"))  # Resumed from disk.
  assert len(again.study.trials) == 40 and again.best().value == (
      best["tpe"].value)


def test_a_bad_trial_is_pruned_at_its_first_report(tmp_path):
  study = search.Search({"x": search.floats(0, 10)}, str(tmp_path))
  for x in (1.0, 2.0, 1.5, 2.5, 3.0, 9.0):  # Five to compare with, one bad.
    study.study.enqueue_trial({"x": x})
  steps = {}

  def curve(overrides, report):
    x = overrides["x"]
    for step in range(1, 11):
      steps[x] = step
      if report(step, x + 1 / step):
        return None
    return x
  study.optimize(curve, trials=6)
  states = [t.state.name for t in study.study.trials]
  assert states == ["COMPLETE"] * 5 + ["PRUNED"]
  assert steps == {1.0: 10, 2.0: 10, 1.5: 10, 2.5: 10, 3.0: 10, 9.0: 1}


_WORKER = """
import os, pathlib, sys, time
from bigmodel_jax import search
study = search.Search({"x": search.floats(-1, 1)}, sys.argv[1],
                      storage=sys.argv[2] if len(sys.argv) > 2 else None)
# Both workers start together (importing can take seconds on a busy
# machine, long enough for one worker to run every trial alone).
ready = pathlib.Path(sys.argv[1])
(ready / f"ready.{os.getpid()}").touch()
deadline = time.monotonic() + 60
while len(list(ready.glob("ready.*"))) < 2 and time.monotonic() < deadline:
  time.sleep(0.01)
mine = []
def objective(overrides, report):
  mine.append(overrides["x"])
  time.sleep(0.05)
  return overrides["x"] ** 2
study.optimize(objective, trials=16)
print(" ".join(str(t.number) for t in study.study.trials
               if t.params.get("x") in mine))
"""


def _two_workers(workdir, *storage) -> list[set]:
  workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(workdir),
                               *storage], stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
  outs = [w.communicate(timeout=120)[0] for w in workers]
  assert [w.returncode for w in workers] == [0, 0]
  return [set(map(int, out.split())) for out in outs]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_workers_share_one_study_without_duplicate_trials(
    tmp_path, database, request):
  storage = [request.getfixturevalue("postgres")] if (
      database == "postgresql") else []
  first, second = _two_workers(tmp_path, *storage)
  numbers = {t.number for t in search.Search(
      {"x": search.floats(-1, 1)}, str(tmp_path),
      storage=storage[0] if storage else None).study.trials}
  assert first and second and not first & second  # Each ran its own.
  assert first | second == numbers
  assert 16 <= len(numbers) <= 17  # At most one more, racing to the end.


def _experiment(tmp_path) -> str:
  path = tmp_path / "searched.py"
  path.write_text(
      f"exec(open({EXPERIMENT!r}).read())\n"
      "from bigmodel_jax import search\n"
      "def get_search_space(arg):\n"
      "  return {'optimizer.learning_rate': search.floats(1e-9, 1e-2, "
      "log=True)}\n")
  return str(path) + ":cpu"


_TRAIN = {**TINY, "total_steps": 30, "eval_every_steps": 5,
          "checkpoint_every_steps": 10,
          "optimizer.min_learning_rate": 0.0}
_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


@pytest.mark.slow
def test_trials_train_report_and_the_bad_one_is_pruned(tmp_path):
  spec = _experiment(tmp_path)
  study = search.Search(sweep.load_space(spec, {}), str(tmp_path / "s"),
                        startup_trials=2)
  for lr in (3e-3, 5e-3, 1e-9):  # The last learns nothing: pruned.
    study.study.enqueue_trial({"optimizer.learning_rate": lr})

  def command(directory, overrides):
    return sweep.command(spec, directory, {**_TRAIN, **overrides})
  status, received = trials.run_trials(study, 3, 2, command)
  assert received is None
  states = [t.state.name for t in study.study.trials]
  assert states == ["COMPLETE", "COMPLETE", "PRUNED"], status
  assert status[2].startswith("pruned at step ")
  logged = [json.loads(line)["step"] for line in open(
      tmp_path / "s" / "trial_0002" / "metrics.jsonl")]
  assert max(logged) < 30  # Stopped early, and saved where it stopped.
  assert "[search] trial 2 pruned at step" in (
      tmp_path / "s" / "trial_0002" / "train.log").read_text()
  assert os.listdir(tmp_path / "s" / "trial_0002" / "checkpoints")
  complete = [t for t in study.study.trials if t.state.name == "COMPLETE"]
  assert all(t.intermediate_values for t in complete)


@pytest.mark.slow
def test_the_command_resumes_a_dead_workers_trial_and_exports_the_best(
    tmp_path):
  workdir = tmp_path / "s"
  args = [sys.executable, "-m", "bigmodel_jax.sweep", "--config",
          _experiment(tmp_path), "--workdir", str(workdir), "--search",
          "random", "--trials", "2", "--export-best",
          str(tmp_path / "best.json")] + [
              f"--config.{k}={v}" for k, v in {
                  **_TRAIN, "total_steps": 200, "log_every_steps": 1}.items()]
  worker = subprocess.Popen(args, env=_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  log = workdir / "trial_0000" / "train.log"
  deadline = time.time() + 120
  while not (log.exists() and "step 12/200" in log.read_text()):
    assert time.time() < deadline and worker.poll() is None
    time.sleep(0.2)
  worker.kill()  # The worker dies; its training saves and stops.
  worker.wait()
  while "interrupted: SIGTERM received" not in log.read_text():
    assert time.time() < deadline
    time.sleep(0.2)
  again = subprocess.run(args, env=_ENV, capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
  assert "trial 0: its worker died; it resumes as a new trial" in again.stdout
  resumed = workdir / "trial_0001"  # Trial 0 became trial 1, in place.
  assert re.search(r"resumed at step [1-9]\d*;",
                   (resumed / "train.log").read_text())
  with open(workdir / "results.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["point"] for r in rows) == ["trial_0001", "trial_0002"]
  assert {r["state"] for r in rows} == {"complete"}
  assert "Best: trial" in (workdir / "results.md").read_text()
  assert (workdir / "parallel.png").stat().st_size > 1000
  best = json.loads((tmp_path / "best.json").read_text())
  parser = config_loader.arg_parser("")
  _, config = config_loader.parse_args(
      parser, ["--config", EXPERIMENT + ":cpu", "--overrides",
               str(tmp_path / "best.json"),
               "--config.optimizer.min_learning_rate=0"])
  assert config.optimizer.learning_rate == best["optimizer.learning_rate"]
  assert optuna.load_study(study_name="search", storage=f"sqlite:///"
                           f"{workdir}/study.db").best_trial.params == best


def test_the_search_command_line_dry_run_slurm_and_errors(tmp_path, capsys):
  base = ["--config", _experiment(tmp_path), "--workdir",
          str(tmp_path / "s"), "--search", "tpe"]
  with pytest.raises(SystemExit) as exit_:
    sweep.main(base + ["--dry-run"])
  assert exit_.value.code == 2
  assert capsys.readouterr().err == (
      "error: --trials N (>= 1) is needed for --search tpe.\n")
  sweep.main(base + ["--trials", "5", "--dry-run"])
  assert "--search tpe --trials 5" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    sweep.main(base + ["--trials", "5", "--slurm"])
  assert "--slurm needs --storage with a database server" in (
      capsys.readouterr().err)
  url = "postgresql+psycopg://u@db.example/studies"
  sweep.main(base + ["--trials", "40", "--slurm", "--workers", "4",
                     "--storage", url])
  script = (tmp_path / "s" / "sweep.sbatch").read_text()
  assert "#SBATCH --array=0-3" in script and f"--storage {url}" in script
  subprocess.run(["bash", "-n", str(tmp_path / "s" / "sweep.sbatch")],
                 check=True)
  assert not (tmp_path / "s" / "study.db").exists()  # Nothing ran.
