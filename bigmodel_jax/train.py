"""Trains a model from an experiment config.

  python -m bigmodel_jax.train --config experiments/gpt_shakespeare_char.py:cpu \\
      --workdir runs/shakespeare [--config.optimizer.learning_rate=3e-4 ...]

Rerunning the same command resumes from the newest checkpoint in the workdir.
SIGTERM or Ctrl-C saves a checkpoint after the step in flight and exits
with status 75 (a second signal exits at once).
Writes WORKDIR/config.json, metrics.jsonl, TensorBoard events, checkpoints/
(with checksums/), holding WORKDIR/.lock while it runs. See
docs/reliability.md for what survives a kill, a full disk, a corrupt
checkpoint, a second run and a bad config.
"""
import contextlib
import math
import os
import sys
import time

import jax

from bigmodel_jax import (checkpoints, config_loader, distributed, experiment,
                          metric_writer, perf, preemption, sharding, steps,
                          workdirs)
from bigmodel_jax import selection as selection_lib
from bigmodel_jax.errors import Diverged, Interrupted, entrypoint


def log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def _format_train(step, total, m, unit) -> str:
  mfu = f"{m['train/mfu']:.1%}" if "train/mfu" in m else "n/a"
  rate = (f"{m[f'train/{unit}_per_sec']:,.0f} {unit}/s | MFU {mfu} | "
          f"ETA {perf.hms(m['eta_seconds'])}"
          if "eta_seconds" in m else "warming up")
  losses = " | ".join(f"{k[len('train/'):]} {v:.4f}" for k, v in m.items()
                      if k.startswith("train/") and k.endswith("loss"))
  lr = (f"lr {m['train/learning_rate']:.2e} | "
        if "train/learning_rate" in m else "")
  return f"step {step}/{total} | {losses} | {lr}{rate}"


def train(config, workdir: str, devices=None,
          resume_from: int | None = None) -> dict:
  """Trains to `config.total_steps`, resuming from WORKDIR (saved on any
  mesh or device count; from checkpoint `resume_from` when given, the later
  ones set aside); returns the last metrics. Uses all devices unless
  `devices` is given. Process 0 holds the workdir's lock throughout."""
  with (workdirs.lock(workdir) if jax.process_index() == 0
        else contextlib.nullcontext()), checkpoints.quiet_failed_saves(), \
      preemption.Watch() as stop:
    if resume_from is not None and jax.process_index() == 0:
      for line in checkpoints.set_aside_after(workdir, resume_from):
        log(line)
    try:
      return _train(config, workdir, devices, stop)
    except Diverged as e:  # Name the checkpoint to go back to.
      raise Diverged(f"{e}{_last_good(workdir)}") from None


def _last_good(workdir: str) -> str:
  """Advice naming the newest checkpoint whose evaluation was finite."""
  saved = set(checkpoints.steps(workdir))
  good = [r["step"] for r in metric_writer.read_jsonl(workdir)
          if r.get("step") in saved and _good_eval(r)] if saved else []
  return (f" The newest checkpoint with a finite evaluation is step "
          f"{max(good)}: add --resume_from {max(good)} (and change what "
          "diverged, e.g. a lower learning rate) to resume from it; the "
          "later checkpoints are set aside." if good else "")


def _train(config, workdir: str, devices, stop: preemption.Watch) -> dict:
  # --- Mesh, data, task, model, sharded state layout, jitted steps ---------
  began = time.perf_counter()
  exp = experiment.build(config, devices)
  config = exp.config  # Resolved: data fields filled in, task named.
  log(f"mesh {dict(exp.mesh.shape)} on {exp.mesh.size} "
      f"{exp.mesh.devices.flat[0].platform} devices, {jax.process_count()} "
      f"process(es); task {config.task.name!r}; data and model ready in "
      f"{time.perf_counter() - began:.1f} s")
  for line in sharding.describe_fallbacks(exp.factory.fallbacks):
    log(f"sharding: {line}")

  # --- Checkpoint: resume from the newest one, else initialise -------------
  good_steps = set()  # Saved steps whose evaluation was finite.
  selection = None  # Best step and early stopping, from the evaluations.
  mgr = checkpoints.manager(workdir, keep=config.keep_checkpoints,
                            good_steps=good_steps,
                            best_step=lambda: selection.best_step)
  train_rng = exp.rngs()[1]
  train_state = checkpoints.restore(mgr, exp.factory.abstract)
  if train_state is None:
    train_state, report = exp.initial_state()
    if report:
      log(report)  # Fine-tuning: pretrained params, fresh optimizer state.
  start = int(jax.device_get(train_state.step))
  log(f"{'resumed at' if start else 'starting from'} step {start}; "
      f"{exp.num_params() / 1e6:.2f}M parameters")

  # --- Workdir files (process 0 writes) ------------------------------------
  writer = metric_writer.MetricWriter(workdir, start)  # Drops steps > start.
  history = writer.records if writer.enabled else _history(workdir, start)
  good_steps.update(r["step"] for r in history if _good_eval(r))
  selection = selection_lib.Selection(config, history)
  if writer.enabled and selection.best_step is not None:
    selection.write(workdir)  # As replayed (--resume_from may go back).
  end = config.total_steps if selection.stopped_at is None else start
  accountant = getattr(exp.task, "accountant", None)  # Privacy spent.
  if accountant is not None:
    log(accountant.describe())
    last_step, line = accountant.limit()
    end = min(end, last_step)
    if line:
      log(line)
  if start >= config.total_steps:
    log(f"already trained to step {start} >= total_steps; nothing to do")
  elif selection.stopped_at is not None:
    log(f"already stopped: {selection.stop_message()}; nothing to do")
  if writer.enabled:
    config_loader.save_run_config(config, workdir, start)
    exp.data.save(workdir)
    writer.write_text("config", "```\n" + str(config) + "\n```")

  # --- Evals ---------------------------------------------------------------
  def written(step, prefix, scalars, records, began) -> dict:
    """Logs and writes an evaluation's scalars and records as PREFIX/NAME."""
    scalars = {f"{prefix}/{k}": v for k, v in scalars.items()}
    writer.write_scalars(step, scalars)
    if records:
      writer.write_record(step, {f"{prefix}/{k}": v
                                 for k, v in records.items()})
    log(f"step {step}/{config.total_steps} | " + " | ".join(
        f"{k} {v:.4f}" for k, v in scalars.items()
        if "/class_" not in k and "/group/" not in k) +
        f" | {prefix} {time.perf_counter() - began:.1f} s")
    return scalars

  def run_eval(step, train_state, split=None, prefix="val") -> dict:
    began = time.perf_counter()
    scalars, records, text = exp.summary(
        exp.eval_totals(train_state.variables, split), split)
    scalars = written(step, prefix, scalars, records, began)
    if accountant is not None and prefix == "val":
      scalars.update(written(step, "privacy", accountant.spent(step), {},
                             time.perf_counter()))
    if text and step == config.total_steps:
      log(f"{split or config.input.get('eval_split', 'eval')} split:\n{text}")
    return scalars

  evaluators = exp.evaluators()  # config.evals: KEY -> evaluator.

  def run_evaluators(step, train_state, is_last) -> dict:
    out = {}
    for key, evaluator in evaluators.items():
      if is_last or (evaluator.every_steps and
                     step % evaluator.every_steps == 0):
        began = time.perf_counter()
        out.update(written(step, key, *evaluator(train_state.variables),
                           began))
    return out

  def evaluators_due(step) -> bool:
    return any(e.every_steps and step % e.every_steps == 0
               for e in evaluators.values())

  # --- Loop ----------------------------------------------------------------
  unit, items_per_batch = exp.units()
  meter = perf.Meter(items_per_batch, exp.flops_per_item(), config.total_steps,
                     unit)
  meter.tick(start)
  last = {}
  pending = []  # (step, device metrics) not fetched yet.

  def flush(records):
    """Fetches finished steps' metrics: stops on NaN/inf, logs log steps."""
    for (step, _), m in zip(records, jax.device_get([m for _, m in records])):
      if not m.pop("finite"):
        losses = ", ".join(f"{k} {v}" for k, v in m.items()
                           if k.endswith("loss"))
        raise Diverged(
            f"Non-finite loss or gradient at step {step} ({losses}). "
            "Stopping; checkpoints before it are kept.")
      if step % config.log_every_steps == 0 or step == config.total_steps:
        m.update(meter.tick(step))
        writer.write_scalars(step, m)
        log(_format_train(step, config.total_steps, m, unit))
        last.update({k: float(v) for k, v in m.items()})

  def check_saves():
    """Raises the error of an async save that failed (e.g. a full disk)."""
    try:
      mgr.check_for_errors()
    except Exception as e:  # Orbax wraps the OSError in its own types.
      raise checkpoints.failure(workdir, e) from e

  profiler = perf.Profiler(workdir, config.get("profile_steps"))
  batches = exp.data.train_batches(start)
  stopped_at = None  # The step saved when a signal stopped the run.
  try:
    for step in range(start + 1, end + 1):
      check_saves()  # A save started earlier may have failed since.
      batch = exp.global_batch(next(batches))
      profiler.before(step)
      train_state, step_metrics = exp.train_step(train_state, batch, train_rng)
      if profiler.after(step, train_state):
        log(f"wrote a profile of steps {profiler.steps} to {workdir}")
      if pending:
        steps.bounded(pending[-1][1])  # The step before this one.
      pending.append((step, step_metrics))
      is_last = step == end  # total_steps, or where the budget ends.
      interrupted = not is_last and stop.requested(step)  # SIGTERM, SIGINT.
      evaluate_now = step % config.eval_every_steps == 0 or is_last
      save_now = (step % config.checkpoint_every_steps == 0 or is_last or
                  interrupted)
      if evaluate_now or save_now or evaluators_due(step):
        flush(pending)  # Blocks on this step: its state is needed anyway.
        pending = []
        with meter.pause():
          new_best = stopping = False
          if evaluate_now:
            scalars = run_eval(step, train_state)
            last.update(scalars)
            new_best = selection.observe(step, scalars)  # Saved, kept.
            stopping = selection.stopped_at == step and not is_last
            save_now = save_now or new_best or stopping
            if save_now and _good_eval(scalars):  # Kept out of rotation.
              good_steps.add(step)
          final = is_last or stopping
          if final and config.input.get("test_split"):  # Held out to here.
            last.update(run_eval(step, train_state, config.input.test_split,
                                 "test"))
          last.update(run_evaluators(step, train_state, final))
          if save_now:  # Refuses a state holding NaN or inf.
            checkpoints.save(mgr, step, train_state)
            if new_best and writer.enabled:
              selection.write(workdir)
        if interrupted:
          stopped_at = step
          break
        if stopping:
          log(selection.stop_message())
          break
      elif len(pending) > 1 and pending[-2][0] % config.log_every_steps == 0:
        flush(pending[:-1])  # Never waits for the step just dispatched.
        pending = pending[-1:]
    flush(pending)
  except BaseException:  # Finish the saves already started, then re-raise.
    _close(batches, mgr, writer)
    raise
  error = _close(batches, mgr, writer)
  if error is not None:
    raise checkpoints.failure(workdir, error) from error
  if stopped_at is not None:
    raise Interrupted(
        f"{stop.signal_name} received: stopped after step {stopped_at} and "
        f"saved checkpoint {stopped_at} in {workdir}/checkpoints. Run the "
        "same command to resume.")
  return last


def _history(workdir: str, start: int) -> list[dict]:
  """The records of steps up to `start` (processes other than 0, which
  only read the run's metrics.jsonl)."""
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    return []
  return [r for r in metric_writer.read_jsonl(workdir)
          if r.get("step", 0) <= start]


def _good_eval(record: dict) -> bool:
  """Whether a metrics record holds a finite validation evaluation."""
  values = [v for k, v in record.items() if k.startswith("val/")]
  return bool(values) and all(math.isfinite(v) for v in values
                              if isinstance(v, (int, float)))


def _close(batches, mgr, writer) -> BaseException | None:
  """Stops the input, waits for pending saves and closes the files; returns
  a save's error instead of raising it (the manager is then left as it is:
  closing it after a failed save can hang)."""
  batches.close()
  writer.close()
  try:
    mgr.wait_until_finished()
    mgr.check_for_errors()
  except Exception as e:  # The async save's own error, wrapped by Orbax.
    return e
  mgr.close()
  return None


@entrypoint
def main(argv=None) -> None:
  distributed.initialize()  # Several processes, when the environment says so.
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--resume_from", type=int, metavar="STEP",
                      help="resume from this checkpoint, setting the later "
                      "ones aside in WORKDIR/set_aside/ (after a divergence)")
  args, config = config_loader.parse_args(parser, argv)
  train(config, args.workdir, resume_from=args.resume_from)


if __name__ == "__main__":
  main(sys.argv[1:])
