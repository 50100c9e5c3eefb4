"""Search trials as training runs, `parallel` at a time per worker.

Each trial trains in DIR/trial_NNNN (`python -m bigmodel_jax.train`); its
worker reads the run's metrics.jsonl as it grows and reports each
evaluation of the search metric to the study. When the pruner gives up on
a trial, the worker sends its run SIGTERM: the run saves and exits, and
the trial is recorded as pruned. A worker holds an flock on the trial's
.claim file while it runs it; a RUNNING trial whose claim is free had its
worker die, and the next worker fails it and enqueues its parameters
again, so a new trial resumes the run from its last checkpoint (the
directory moves to the new trial's number).
"""
import fcntl
import math
import os
import signal
import time

import optuna

from bigmodel_jax import metric_writer, perf, preemption
from bigmodel_jax import search as search_lib
from bigmodel_jax.errors import Interrupted


def trial_dir(workdir: str, number: int) -> str:
  return os.path.join(workdir, f"trial_{number:04d}")


class _Claim:
  """An flock on a file, e.g. the .claim a worker holds on DIR/trial_NNNN
  while it runs the trial (free: its worker died), or the run's .lock."""

  def __init__(self, path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)

  def take(self) -> bool:
    try:
      fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      return True
    except BlockingIOError:
      return False

  def release(self) -> None:
    os.close(self.fd)


def _orphaned(directory: str) -> bool:
  """Whether neither a worker (.claim) nor a training (.lock) holds it."""
  locks = [_Claim(os.path.join(directory, name))
           for name in (".claim", ".lock")]
  try:
    return all(lock.take() for lock in locks)
  finally:
    for lock in locks:
      lock.release()


def requeue_orphans(search: search_lib.Search) -> list[int]:
  """Running trials whose worker died (and whose training has ended, as
  the worker's death stops it): each is failed and enqueued again with
  its parameters, to resume in its directory; their numbers."""
  orphans = []
  for t in search.study.get_trials(
      deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
    if _orphaned(trial_dir(search.workdir, t.number)):
      search.study.tell(t.number, state=optuna.trial.TrialState.FAIL)
      search.study.enqueue_trial(t.params, user_attrs={"resumes": t.number})
      orphans.append(t.number)
  return orphans


class _Running:
  """A trial's training process, its claim and what it reported."""

  def __init__(self, trial, command, directory):
    self.trial, self.directory = trial, directory
    self.claim = _Claim(os.path.join(directory, ".claim"))
    self.claim.take()
    self.log = open(os.path.join(directory, "train.log"), "a")
    self.proc = preemption.start_child(command, self.log)
    self.began, self.reported, self.pruned = time.time(), set(), None

  def report(self, metric: str) -> None:
    """Reports new evaluations of `metric`; stops the run once pruned."""
    path = os.path.join(self.directory, "metrics.jsonl")
    if self.pruned is not None or not os.path.exists(path):
      return
    for record in metric_writer.read_jsonl(self.directory):
      step = record.get("step")
      if metric in record and step not in self.reported:
        self.reported.add(step)
        self.trial.report(float(record[metric]), step)
        if self.trial.should_prune():
          self.pruned = (step, record[metric])
          self.proc.send_signal(signal.SIGTERM)  # Saves and stops.
          return

  def final(self, metric: str) -> float | None:
    values = [r[metric] for r in metric_writer.read_jsonl(self.directory)
              if metric in r]
    return values[-1] if values else None

  def close(self) -> None:
    self.log.close()
    self.claim.release()


def run_trials(search: search_lib.Search, trials: int, parallel: int,
               command) -> tuple[dict, str | None]:
  """Runs training trials until the study has `trials`, `parallel` at a
  time (`command(directory, overrides)`: the train command line); returns
  ({number: outcome}, the signal that stopped this worker or None)."""
  for number in requeue_orphans(search):
    print(f"[search] trial {number}: its worker died; it resumes as a new "
          "trial", flush=True)
  running, status, start = {}, {}, time.time()
  with preemption.Forwarding(
      lambda: [r.proc for r in running.values()]) as signals:
    while running or (search.counted() < trials and not signals.received):
      while (len(running) < parallel and not signals.received and
             search.counted() < trials):
        trial, overrides = search.ask()
        directory = trial_dir(search.workdir, trial.number)
        resumes = trial.user_attrs.get("resumes")
        if resumes is not None and os.path.isdir(
            trial_dir(search.workdir, resumes)):
          os.rename(trial_dir(search.workdir, resumes), directory)
        running[trial.number] = _Running(
            trial, command(directory, overrides), directory)
      time.sleep(0.5)
      for number, run in list(running.items()):
        run.report(search.metric)
        if run.proc.poll() is None:
          continue
        status[number] = _tell(search, run)
        run.close()
        del running[number]
        print(f"[search] trial {number}: {status[number]} in "
              f"{perf.hms(time.time() - run.began)} | {search.counted()}/"
              f"{trials} trials | elapsed {perf.hms(time.time() - start)}",
              flush=True)
  return status, signals.received


def _tell(search: search_lib.Search, run: _Running) -> str:
  """Records a finished trial's outcome in the study; its status text."""
  code, states = run.proc.returncode, optuna.trial.TrialState
  if run.pruned is not None:
    search.study.tell(run.trial, state=states.PRUNED)
    step, value = run.pruned
    text = f"pruned at step {step} ({search.metric} {value:.4g})"
    run.log.write(f"[search] trial {run.trial.number} {text}: the search "
                  "stopped this run\n")
    return text
  if code == Interrupted.exit_code:  # Stopped by a signal: resumes later.
    return "interrupted"
  value = run.final(search.metric) if code == 0 else None
  if value is None or not math.isfinite(value):
    search.study.tell(run.trial, state=states.FAIL)
    return (f"failed (exit {code})" if code else
            f"failed (no finite {search.metric})")
  search.study.tell(run.trial, value)
  return f"{search.metric} {value:.4g}"


def rows(search: search_lib.Search) -> tuple[dict, dict]:
  """(trial directory name -> overrides, name -> state and objective) of
  the study's trials; a trial resumed by a later one is shown as that."""
  trials = search.study.get_trials(deepcopy=False)
  resumed = {t.user_attrs["resumes"] for t in trials
             if "resumes" in t.user_attrs}
  points, extra = {}, {}
  for t in trials:
    if t.number in resumed:
      continue
    name = os.path.basename(trial_dir(search.workdir, t.number))
    points[name] = dict(t.params)
    extra[name] = {"state": t.state.name.lower(),
                   "objective": "" if t.value is None else t.value,
                   "wall s": "" if t.duration is None else round(
                       t.duration.total_seconds(), 1)}
  return points, extra
