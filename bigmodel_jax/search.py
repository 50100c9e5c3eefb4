"""Hyperparameter search with Optuna: samplers, pruning, shared studies.

An experiment file defines `get_search_space(arg)`, config key -> range:

  def get_search_space(arg):
    return {"optimizer.learning_rate": search.floats(1e-5, 1e-2, log=True),
            "optimizer.warmup_steps": search.ints(0, 200),
            "model.mlp": search.choice(["gelu", "swiglu"])}

`python -m bigmodel_jax.sweep ... --search tpe|random|grid --trials N` runs
it (see sweep.py): each trial is a training run in DIR/trial_NNNN whose
evaluations of `--metric` are reported to Optuna as it trains (trials.py);
a trial the pruner (median or successive halving) gives up on is stopped
(it saves and exits, as on SIGTERM) and recorded as pruned. The study lives in
Optuna storage: DIR/study.db (SQLite) by default, or any database URL, so
several workers (processes, machines, a SLURM array) share one study.
Rerunning continues it; a trial whose worker died resumes from its last
checkpoint in a new trial with the same parameters.

From Python (a notebook) the same study runs any objective:

  study = search.Search(space, "runs/s", metric="val/loss")
  study.optimize(lambda overrides, report: ..., trials=20)
  study.study  # the optuna.Study, for optuna.visualization
"""
import dataclasses
import json
import math
import os
import random
import shlex
import time
import warnings

import numpy as np
import optuna
import sqlalchemy

from bigmodel_jax import selection
from bigmodel_jax.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")


# --- Search spaces ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Range:
  """Numbers in [low, high]: floats, or ints with `integer`; log-uniform
  (and log-spaced on a grid) with `log`."""
  low: float
  high: float
  log: bool = False
  integer: bool = False

  def suggest(self, trial, key):
    suggest = trial.suggest_int if self.integer else trial.suggest_float
    return suggest(key, self.low, self.high, log=self.log)

  def grid(self, points: int) -> list:
    space = np.geomspace if self.log else np.linspace
    values = space(self.low, self.high, points)
    return (sorted({int(round(v)) for v in values}) if self.integer
            else [float(v) for v in values])


@dataclasses.dataclass(frozen=True)
class Choice:
  values: tuple

  def suggest(self, trial, key):
    return trial.suggest_categorical(key, list(self.values))

  def grid(self, points: int) -> list:
    del points
    return list(self.values)


def floats(low: float, high: float, log: bool = False) -> Range:
  """A float in [low, high] (log-uniform with `log`)."""
  return Range(low, high, log)


def ints(low: int, high: int, log: bool = False) -> Range:
  """An int in [low, high]."""
  return Range(low, high, log, integer=True)


def choice(values) -> Choice:
  """One of `values` (numbers, strings, bools)."""
  return Choice(tuple(values))


def grid_size(space: dict, points: int = 3) -> int:
  """Trials of `--search grid` (`points` values per numeric range)."""
  return math.prod(len(spec.grid(points)) for spec in space.values())


# --- The study ----------------------------------------------------------------
def default_storage(workdir: str) -> str:
  return f"sqlite:///{os.path.abspath(workdir)}/study.db"


class Search:
  """An Optuna study over `space` (config key -> Range/Choice), stored in
  `storage` (default: WORKDIR/study.db). The median pruner prunes nothing
  before `startup_trials` trials are complete. The sampler's `seed` (None:
  fresh entropy) makes one worker's search repeatable; workers of one study
  need different seeds, or they propose the same points."""

  def __init__(self, space: dict, workdir: str, *, sampler: str = "tpe",
               pruner: str = "median", metric: str = "val/loss",
               direction: str | None = None, storage: str | None = None,
               name: str = "search", seed: int | None = None,
               grid_points: int = 3, startup_trials: int = 5):
    if sampler not in SAMPLERS:
      raise ConfigError(f"--search {sampler!r}: use one of {SAMPLERS}.")
    if pruner not in PRUNERS:
      raise ConfigError(f"--pruner {pruner!r}: use one of {PRUNERS}.")
    bad = [k for k, v in space.items()
           if not isinstance(v, (Range, Choice))]
    if not space or bad:
      raise ConfigError("get_search_space must map config keys to "
                        "search.floats/ints/choice ranges"
                        f"{f'; not {bad}' if bad else ''}.")
    self.space, self.workdir, self.metric = space, workdir, metric
    os.makedirs(workdir, exist_ok=True)
    self.storage = storage or default_storage(workdir)
    self.grid = {k: v.grid(grid_points) for k, v in space.items()}
    samplers = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "grid": lambda: optuna.samplers.GridSampler(self.grid,
                                                            seed=seed)}
    pruners = {"median": lambda: optuna.pruners.MedianPruner(
                   n_startup_trials=startup_trials),
               "halving": optuna.pruners.SuccessiveHalvingPruner,
               "none": optuna.pruners.NopPruner}
    direction = direction or ("minimize" if selection.lower_is_better(metric)
                              else "maximize")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for attempt in range(5):  # Workers started together race to create it.
      try:
        self.study = optuna.create_study(
            study_name=name, storage=self.storage,
            sampler=samplers[sampler](), pruner=pruners[pruner](),
            direction=direction, load_if_exists=True)
        break
      except (sqlalchemy.exc.SQLAlchemyError,
              optuna.exceptions.DuplicatedStudyError):
        if attempt == 4:
          raise
        time.sleep(0.2 + random.random())

  def counted(self) -> int:
    """Trials that count towards the budget: those started, but for those
    resumed by a later trial (their worker died)."""
    trials = self.study.get_trials(deepcopy=False)
    resumed = {t.user_attrs["resumes"] for t in trials
               if "resumes" in t.user_attrs and t.state.name != "WAITING"}
    return sum(t.state.name != "WAITING" for t in trials) - len(resumed)

  def ask(self) -> tuple[optuna.trial.Trial, dict]:
    """(a new trial, its config overrides)."""
    trial = self.study.ask()
    return trial, {k: spec.suggest(trial, k) for k, spec in self.space.items()}

  def optimize(self, objective, trials: int) -> optuna.Study:
    """Runs `objective(overrides, report) -> value` in this process until
    the study has `trials` trials; `report(step, value)` returns whether
    the trial is pruned (the objective should then return at once)."""
    while self.counted() < trials:
      trial, overrides = self.ask()

      def report(step, value, trial=trial):
        trial.report(float(value), int(step))
        return trial.should_prune()
      try:
        value = objective(overrides, report)
      except Exception:
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        raise
      if trial.should_prune():
        self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
      else:
        self.study.tell(trial, value)
    return self.study

  def best(self) -> optuna.trial.FrozenTrial | None:
    try:
      return self.study.best_trial
    except ValueError:  # No complete trial yet.
      return None


# --- Results --------------------------------------------------------------------
def summary(search: Search) -> list[str]:
  """Markdown lines: the best trial and the parameter importances."""
  best = search.best()
  if best is None:
    return ["No trial has completed yet."]
  lines = [f"Best: trial {best.number}, {search.metric} {best.value:.4g}, "
           f"with {json.dumps(best.params)}.", ""]
  complete = [t for t in search.study.get_trials(deepcopy=False)
              if t.state.name == "COMPLETE"]
  if len(complete) >= 2 and len(search.space) > 1:
    importances = optuna.importance.get_param_importances(search.study)
    lines += ["| parameter | importance |", "|---|---|"] + [
        f"| {k} | {v:.3f} |" for k, v in importances.items()]
  return lines


def plot(search: Search, path: str) -> bool:
  """A parallel-coordinates plot of the trials (PNG); False if too few."""
  complete = [t for t in search.study.get_trials(deepcopy=False)
              if t.state.name == "COMPLETE"]
  if len(complete) < 2:
    return False
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from optuna.visualization import matplotlib as optuna_plots
  with warnings.catch_warnings():  # "experimental" warnings.
    warnings.simplefilter("ignore")
    axes = optuna_plots.plot_parallel_coordinate(search.study)
  axes.figure.set_size_inches(10, 5)
  axes.figure.savefig(path, dpi=100, bbox_inches="tight")
  plt.close(axes.figure)
  return True


def export_best(search: Search, path: str) -> dict:
  """Writes the best trial's overrides as JSON (for train --overrides)."""
  best = search.best()
  if best is None:
    raise ConfigError("--export-best: no trial has completed yet.")
  with open(path, "w") as f:
    json.dump(best.params, f, indent=2, sort_keys=True)
  return best.params


def slurm_script(workdir: str, workers: int, worker_args: list[str]) -> str:
  """A SLURM job array whose `workers` tasks all work on the same study
  (edit the #SBATCH lines)."""
  return "\n".join([
      "#!/bin/bash", "#SBATCH --job-name=search",
      f"#SBATCH --array=0-{workers - 1}", "#SBATCH --gpus-per-task=1",
      f"#SBATCH --output={os.path.abspath(workdir)}/slurm-%A_%a.log",
      "set -euo pipefail", "python " + shlex.join(worker_args), ""])
