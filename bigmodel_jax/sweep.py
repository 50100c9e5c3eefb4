"""Runs an experiment's sweep: every point its own process and workdir.

  python -m bigmodel_jax.sweep --config experiments/X.py:variant --workdir DIR \\
      [--parallel N] [--dry-run | --slurm] [--config.key=value ...]

The experiment file defines `get_sweep(arg)` returning a list of override
dicts, usually built with `product` and `zip_axes`:

  def get_sweep(arg):
    return sweep.product({"optimizer.learning_rate": [3e-4, 1e-3],
                          "model.num_layers": [2, 4]})

Each point trains with `python -m bigmodel_jax.train` in DIR/NAME (log in
DIR/NAME/train.log); `--config.*` overrides apply to every point. A finished
point (DIR/NAME/done.json) is skipped when the sweep is run again; a failed
one is reported and the others go on. SIGTERM or Ctrl-C is passed to the
running points (each saves a checkpoint and stops, "interrupted"), no new
point starts, and the sweep exits 75; running it again resumes. At the end DIR/results.csv and
DIR/results.md hold one row per point (overrides, final and best metrics,
steps, wall time) and DIR/plot_*.png one line per point for each metric.
`--dry-run` prints the commands; `--slurm` writes DIR/sweep.sbatch, a job
array with one task per point, instead of running.
"""
import csv
import itertools
import json
import os
import re
import shlex
import sys
import time

import numpy as np

from bigmodel_jax import (config_loader, metric_writer, perf, plots,
                          preemption)
from bigmodel_jax import search as search_lib
from bigmodel_jax import trials as trials_lib
from bigmodel_jax.errors import Interrupted, entrypoint

PLOTTED = ("train/loss", "val/loss", "val/accuracy")


def product(axes: dict) -> list[dict]:
  """Every combination of the axes' values (the last axis varies fastest)."""
  keys = list(axes)
  return [dict(zip(keys, values))
          for values in itertools.product(*(axes[k] for k in keys))]


def zip_axes(axes: dict) -> list[dict]:
  """The i-th values of all axes together; all axes have the same length."""
  lengths = {len(v) for v in axes.values()}
  if len(lengths) > 1:
    raise ValueError(f"zip_axes needs equal lengths, got "
                     f"{ {k: len(v) for k, v in axes.items()} }.")
  return [dict(zip(axes, values)) for values in zip(*axes.values())]


def load_points(spec: str, common: dict) -> list[dict]:
  """The sweep's override dicts, each checked against the config."""
  module, arg = config_loader.load_module(spec)
  if not hasattr(module, "get_sweep"):
    raise config_loader.ConfigError(
        f"{spec.partition(':')[0]} defines no get_sweep(arg).")
  points = list(module.get_sweep(arg))
  for point in points:  # Unknown keys fail here, before anything runs.
    config_loader.load(spec, {**common, **point})
  return points


def point_name(index: int, point: dict) -> str:
  """A directory name such as "03_learning_rate=0.001_num_layers=4"."""
  parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
  return re.sub(r"[^A-Za-z0-9_.=+-]", "-", f"{index:02d}_" + "_".join(parts))


def command(spec: str, workdir: str, overrides: dict) -> list[str]:
  return ([sys.executable, "-m", "bigmodel_jax.train", "--config", spec,
           "--workdir", workdir] +
          [f"--config.{k}={v}" for k, v in overrides.items()])


def run(spec: str, workdir: str, points: list[dict], common: dict,
        parallel: int = 1) -> dict[str, str]:
  """Runs the unfinished points, `parallel` at a time; name -> status
  ("done", "failed (exit N)", "interrupted")."""
  names = [point_name(i, p) for i, p in enumerate(points)]
  status = {n: "done" for n in names
            if os.path.exists(os.path.join(workdir, n, "done.json"))}
  todo = [(n, p) for n, p in zip(names, points) if n not in status]
  print(f"[sweep] {len(points)} points, {len(status)} already done, "
        f"{len(todo)} to run, {parallel} at a time", flush=True)
  running, durations, start = {}, [], time.time()
  with preemption.Forwarding(
      lambda: [proc for proc, _, _ in running.values()]) as signals:
    while (todo and not signals.received) or running:
      while todo and len(running) < parallel and not signals.received:
        name, point = todo.pop(0)
        point_dir = os.path.join(workdir, name)
        os.makedirs(point_dir, exist_ok=True)
        log = open(os.path.join(point_dir, "train.log"), "a")
        proc = preemption.start_child(
            command(spec, point_dir, {**common, **point}), log)
        running[name] = (proc, log, time.time())
      time.sleep(0.2)
      for name, (proc, log, began) in list(running.items()):
        if proc.poll() is None:
          continue
        log.close()
        del running[name]
        seconds = time.time() - began
        status[name] = _ended(os.path.join(workdir, name), proc.returncode,
                              seconds)
        if status[name] == "done":
          durations.append(seconds)
        left = len(todo) + len(running)
        eta = (sum(durations) / len(durations) * left / parallel
               if durations else 0)
        print(f"[sweep] {name}: {status[name]} in {perf.hms(seconds)} | "
              f"{len(status)}/{len(points)} finished | ETA {perf.hms(eta)} "
              f"(elapsed {perf.hms(time.time() - start)})", flush=True)
        if proc.returncode:
          print(f"[sweep]   see {os.path.join(workdir, name, 'train.log')}",
                flush=True)
  return status


def _ended(point_dir: str, returncode: int, seconds: float) -> str:
  """A finished point's status; a done one gets its done.json."""
  if returncode == 0:
    with open(os.path.join(point_dir, "done.json"), "w") as f:
      json.dump({"wall_seconds": seconds}, f)
    return "done"
  if returncode == Interrupted.exit_code:
    return "interrupted"
  return f"failed (exit {returncode})"


def summarize(workdir: str, name: str, point: dict,
              records: list[dict] | None) -> dict:
  """One results row: overrides, final and best metrics, steps, wall time
  (`records`: the point's metrics.jsonl, None if it wrote none)."""
  row = {"point": name, **point}
  if records is None:
    return row
  path = os.path.join(workdir, name)
  final = {}
  for r in records:
    final.update({k: v for k, v in r.items()
                  if isinstance(v, (int, float)) and "/class_" not in k})
  row["steps"] = final.pop("step", None)
  for key in ("val/loss", "val/accuracy", "test/accuracy", "train/loss"):
    if key in final:
      row[f"final {key}"] = final[key]
  for key, best in (("val/loss", min), ("val/accuracy", max)):
    values = plots.series(records, key)[1]
    if values:
      row[f"best {key}"] = best(values)
  done = os.path.join(path, "done.json")
  if os.path.exists(done):
    with open(done) as f:
      row["wall s"] = round(json.load(f)["wall_seconds"], 1)
  return row


def _cell(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_results(workdir: str, points: dict, extra: dict | None = None,
                  notes=()) -> list[dict]:
  """results.csv, results.md (the table, then `notes`: lines, or a
  function of the rows printed too) and the plots of the runs `points`
  (directory name -> overrides; `extra`: name -> more columns); returns
  the rows."""
  runs = {n: metric_writer.read_jsonl(os.path.join(workdir, n))
          for n in points
          if os.path.exists(os.path.join(workdir, n, "metrics.jsonl"))}
  rows = [{**summarize(workdir, n, p, runs.get(n)), **(extra or {}).get(n, {})}
          for n, p in points.items()]
  if callable(notes):
    notes = notes(rows)
    print("\n".join(notes))
  columns = list(dict.fromkeys(k for row in rows for k in row))
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    writer.writerows(rows)
  lines = ["| " + " | ".join(columns) + " |",
           "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |"
            for r in rows]
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write("\n".join(lines + ([""] + list(notes) if notes else [])) + "\n")
  for metric in PLOTTED:
    if any(plots.series(r, metric)[0] for r in runs.values()):
      plots.plot(runs, metric, os.path.join(
          workdir, f"plot_{metric.replace('/', '_')}.png"))
  return rows


def slurm_script(spec: str, workdir: str, points: list[dict],
                 common: dict) -> str:
  """A SLURM job array: task i runs point i (edit the #SBATCH lines)."""
  lines = ["#!/bin/bash", "#SBATCH --job-name=sweep",
           f"#SBATCH --array=0-{len(points) - 1}",
           "#SBATCH --gpus-per-task=1",
           f"#SBATCH --output={os.path.abspath(workdir)}/slurm-%A_%a.log",
           "set -euo pipefail", "COMMANDS=("]
  for i, point in enumerate(points):
    point_dir = os.path.abspath(os.path.join(workdir, point_name(i, point)))
    lines.append("  " + shlex.quote(shlex.join(
        command(spec, point_dir, {**common, **point})[1:])))
  lines += [")", 'eval "python ${COMMANDS[$SLURM_ARRAY_TASK_ID]}"', ""]
  return "\n".join(lines)


@entrypoint
def main(argv=None) -> None:
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--parallel", type=int, default=1)
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true")
  mode.add_argument("--slurm", action="store_true")
  parser.add_argument("--folds", type=int, metavar="K",
                      help="k-fold cross-validation: the points are the "
                      "folds of the train split (classification inputs)")
  searching = parser.add_argument_group("search (get_search_space)")
  searching.add_argument("--search", choices=search_lib.SAMPLERS)
  searching.add_argument("--trials", type=int,
                         help="trials in the study (grid: all its points)")
  searching.add_argument("--pruner", choices=search_lib.PRUNERS,
                         default="median")
  searching.add_argument("--startup-trials", type=int, default=5,
                         help="complete trials before the median pruner "
                         "prunes")
  searching.add_argument("--metric", default="val/loss",
                         help="the evaluation metric to optimize")
  searching.add_argument("--storage", help="Optuna storage URL (default: "
                         "sqlite:///DIR/study.db)")
  searching.add_argument("--seed", type=int, help="the sampler's seed "
                         "(default: fresh; give each worker its own)")
  searching.add_argument("--workers", type=int, default=1,
                         help="--slurm: array tasks working on the study")
  searching.add_argument("--export-best", metavar="FILE",
                         help="write the best overrides (train --overrides)")
  args, common = config_loader.parse_args(
      parser, argv, lambda spec, common: (config_loader.load(spec, common),
                                          common)[1])
  if args.parallel < 1:  # 0 or less would wait forever for a free slot.
    raise config_loader.ConfigError(
        f"--parallel={args.parallel}: it must be >= 1.")
  if args.search:
    return _search(args, common)
  points = (fold_points(args.config, common, args.folds) if args.folds
            else load_points(args.config, common))
  if args.dry_run:
    for i, point in enumerate(points):
      print(shlex.join(command(args.config, os.path.join(
          args.workdir, point_name(i, point)), {**common, **point})))
    return
  if args.slurm:
    _write_sbatch(args.workdir, slurm_script(args.config, args.workdir,
                                             points, common))
    return
  os.makedirs(args.workdir, exist_ok=True)
  status = run(args.config, args.workdir, points, common, args.parallel)
  write_results(args.workdir, {point_name(i, p): p
                               for i, p in enumerate(points)},
                notes=cross_validation if args.folds else ())
  failed = [n for n, s in status.items() if s.startswith("failed")]
  stopped = len(points) - len(failed) - list(status.values()).count("done")
  print(f"[sweep] wrote {args.workdir}/results.csv, results.md, plot_*.png"
        + (f"; FAILED: {', '.join(failed)}" if failed else "")
        + (f"; {stopped} point(s) interrupted or not started: run the same "
           "command to resume" if stopped else ""))
  if failed or stopped:
    sys.exit(1 if failed else Interrupted.exit_code)


def _write_sbatch(workdir: str, script: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "sweep.sbatch")
  with open(path, "w") as f:
    f.write(script)
  print(f"wrote {path}; submit with: sbatch {path}")


def _search(args, common: dict) -> None:
  """`--search`: an Optuna study of the experiment's search space."""
  space = load_space(args.config, common)
  storage = args.storage or search_lib.default_storage(args.workdir)
  trials = args.trials or (search_lib.grid_size(space)
                           if args.search == "grid" else 0)
  if trials < 1:
    raise config_loader.ConfigError("--trials N (>= 1) is needed for "
                                    f"--search {args.search}.")
  worker = [sys.executable, "-m", "bigmodel_jax.sweep", "--config",
            args.config, "--workdir", os.path.abspath(args.workdir),
            "--search", args.search, "--trials", str(trials), "--pruner",
            args.pruner, "--startup-trials", str(args.startup_trials),
            "--metric", args.metric, "--storage", storage,
            "--parallel", str(args.parallel)] + [
                f"--config.{k}={v}" for k, v in common.items()]
  if args.dry_run:
    print(shlex.join(worker))
    return
  if args.slurm:
    if storage.startswith("sqlite"):
      raise config_loader.ConfigError(
          "--slurm needs --storage with a database server (e.g. "
          "postgresql+psycopg://user@host/db): SQLite is not safe across "
          "machines.")
    _write_sbatch(args.workdir, search_lib.slurm_script(
        args.workdir, args.workers, worker[1:]))
    return
  study = search_lib.Search(space, args.workdir, sampler=args.search,
                            pruner=args.pruner, metric=args.metric,
                            storage=storage, seed=args.seed,
                            startup_trials=args.startup_trials)
  _, received = trials_lib.run_trials(
      study, trials, args.parallel,
      lambda directory, overrides: command(args.config, directory,
                                           {**common, **overrides}))
  points, extra = trials_lib.rows(study)
  summary = search_lib.summary(study)
  write_results(args.workdir, points, extra, summary)
  wrote = ["results.csv", "results.md", "plot_*.png"]
  if search_lib.plot(study, os.path.join(args.workdir, "parallel.png")):
    wrote.append("parallel.png")
  if args.export_best and study.best() is not None:
    search_lib.export_best(study, args.export_best)
    wrote.append(args.export_best)
  print(f"[search] wrote {', '.join(wrote)} in {args.workdir}; "
        f"{summary[0]}")
  if received:
    print("[search] interrupted: run the same command to resume")
    sys.exit(Interrupted.exit_code)


def fold_points(spec: str, common: dict, k: int) -> list[dict]:
  """The k points of k-fold cross-validation (input.num_folds, fold)."""
  config = config_loader.load(spec, common)
  if "num_folds" not in config.input:
    raise config_loader.ConfigError(
        f"--folds: input {config.input.name!r} has no input.num_folds (a "
        "classification input has).")
  if k < 2:
    raise config_loader.ConfigError(f"--folds={k}: it must be >= 2.")
  return [{"input.num_folds": k, "input.fold": i} for i in range(k)]


def cross_validation(rows: list[dict]) -> list[str]:
  """Markdown lines: each final metric's mean, standard deviation and 95%
  interval (Student's t) over the folds' rows."""
  from scipy import stats  # scikit-learn's dependency.
  lines = ["| metric | mean | std | 95% interval | folds |", "|---|---|---|---|---|"]
  for column in dict.fromkeys(k for r in rows for k in r):
    values = [r[column] for r in rows if isinstance(r.get(column), float)]
    if not column.startswith("final ") or len(values) < 2:
      continue
    mean, std = float(np.mean(values)), float(np.std(values, ddof=1))
    half = stats.t.ppf(0.975, len(values) - 1) * std / np.sqrt(len(values))
    lines.append(f"| {column[len('final '):]} | {mean:.4f} | {std:.4f} | "
                 f"[{mean - half:.4f}, {mean + half:.4f}] | {len(values)} |")
  return ["Cross-validation over the folds (the test split is not used):",
          ""] + lines


def load_space(spec: str, common: dict) -> dict:
  """The experiment's `get_search_space(arg)`, its keys checked."""
  module, arg = config_loader.load_module(spec)
  if not hasattr(module, "get_search_space"):
    raise config_loader.ConfigError(
        f"{spec.partition(':')[0]} defines no get_search_space(arg).")
  space = module.get_search_space(arg)
  known = config_loader.flat_keys(config_loader.load(spec, common))
  unknown = sorted(set(space) - set(known))
  if unknown:
    raise config_loader.ConfigError(
        f"get_search_space names unknown config keys {unknown}.")
  return space


if __name__ == "__main__":
  main()
