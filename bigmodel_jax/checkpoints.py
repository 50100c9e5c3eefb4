"""Orbax checkpoints in WORKDIR/checkpoints: saved only when finite, verified
when restored, restored into the sharded target of the current mesh.

`save` refuses a state holding a NaN or inf and writes per-array checksums
(WORKDIR/checksums/STEP.json) beside the checkpoint (removing those of
checkpoints rotated away); `restore` brings back a
whole train state (resuming), first checking that the checkpoint was saved
with this config's shapes, then that every array matches its checksums and
is finite; `restore_params` reads only the parameters (sampling,
fine-tuning, serving), shard by shard into the layout of the current mesh:
no optimizer moments, no unsharded copy. Every failure is one
`CheckpointError` naming the checkpoint and what to do.
"""
import contextlib
import dataclasses
import json
import logging
import os
import re
import time
import typing

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from bigmodel_jax import sharding
from bigmodel_jax.errors import CheckpointError, Diverged, NotFound, SaveFailed


@dataclasses.dataclass
class KeepLastGood:
  """Orbax preservation policy: keeps the newest checkpoint whose step is in
  `steps` (those that passed an evaluation), whatever the rotation says."""
  steps: set

  def should_preserve(self, checkpoints, *, context):
    del context
    good = max((c.step for c in checkpoints if c.step in self.steps),
               default=None)
    return [c.step == good for c in checkpoints]


@dataclasses.dataclass
class KeepStep:
  """Orbax preservation policy: keeps the checkpoint of `step()` (e.g. the
  best evaluation's), whatever the rotation says."""
  step: typing.Callable[[], int | None]

  def should_preserve(self, checkpoints, *, context):
    del context
    return [c.step == self.step() for c in checkpoints]


def manager(workdir: str, *, keep: int | None = None, async_save: bool = True,
            good_steps: set | None = None, best_step=None
            ) -> ocp.CheckpointManager:
  """Saves (async) the steps it is asked to, keeps the newest `keep`, the
  newest of `good_steps` and the step `best_step()` names; removes
  half-written (tmp) checkpoints of crashed runs when it starts (the caller
  holds the workdir lock)."""
  policies = [ocp.checkpoint_managers.LatestN(keep)]
  if good_steps is not None:
    policies.append(KeepLastGood(good_steps))
  if best_step is not None:
    policies.append(KeepStep(best_step))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=async_save, create=True,
      cleanup_tmp_directories=True,
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(
          policies))
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


# --- Checksums and finiteness, computed on device -----------------------------
def _as_uint32(x):
  if x.dtype.itemsize == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if x.dtype.itemsize == 2:
    return jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
  if x.dtype.itemsize == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  return x.astype(jnp.uint32)


@jax.jit
def _inspect(tree):
  """(two uint32 checksums per array, whether every float is finite):
  exact whatever the sharding (integer sums wrap around)."""
  def sums(x):
    u = _as_uint32(x)
    mixed = (u * jnp.uint32(2654435761)) ^ (u >> 16)
    return jnp.stack([jnp.sum(u, dtype=jnp.uint32),
                      jnp.sum(mixed, dtype=jnp.uint32)])
  floats = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jax.tree.map(sums, tree), jnp.all(jnp.stack(floats or [True]))


def _host(x) -> np.ndarray:
  return np.asarray(x.addressable_data(0))  # Replicated: any shard is all.


def inspect(tree) -> tuple[dict, bool]:
  """({"params/layer/kernel": [sum, mix], ...}, all finite) of a state."""
  sums, finite = _inspect(tree)
  flat = jax.tree_util.tree_flatten_with_path(sums)[0]
  return ({jax.tree_util.keystr(path, simple=True, separator="/"):
           _host(x).tolist() for path, x in flat}, bool(_host(finite)))


def _checksum_path(workdir: str, step: int) -> str:
  return os.path.join(os.path.abspath(workdir), "checksums", f"{step}.json")


# --- Failed saves ---------------------------------------------------------------
_NOISE = re.compile(r"RESOURCE_EXHAUSTED|never retrieved|_SignalingThread\.run"
                    r"\(\) raised|Event loop is closed|No space left")


def failure(workdir: str, error: BaseException) -> SaveFailed:
  """One line for an error of Orbax's (async) save, e.g. a full disk."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = str(error).split("\n")[0]
  code = re.search(r"os_error_code='?(\d+)", text)
  cause = (os.strerror(int(code.group(1))) if code else
           error.strerror if isinstance(error, OSError) and error.strerror
           else f"{type(error).__name__}: {text[:200]}")
  return SaveFailed(f"Writing a checkpoint to {workdir}/checkpoints failed: "
                    f"{cause}. Stopping; the checkpoints before it are kept.")


class _DropNoise(logging.Filter):
  def filter(self, record):
    text = record.getMessage()
    if record.exc_info:
      text += str(record.exc_info[1])
    return not _NOISE.search(text)


@contextlib.contextmanager
def quiet_failed_saves():
  """While a run saves: a failing async save makes Orbax's threads log the
  same error many times; `failure` reports it once, so those log records
  are dropped. (TensorStore may still print "Event loop is closed" from C++
  when a write fails mid-save; `save` checks free space first so a full
  disk normally never gets that far.)"""
  drop = _DropNoise()
  loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
  for logger in loggers:
    logger.addFilter(drop)
  try:
    yield
  finally:
    for logger in loggers:
      logger.removeFilter(drop)


def free_bytes(directory: str) -> int | None:
  """Bytes free for this user on `directory`'s filesystem (None: unknown,
  e.g. an object store)."""
  try:
    stats = os.statvfs(directory)
  except OSError:
    return None
  return stats.f_bavail * stats.f_frsize


def save(mgr: ocp.CheckpointManager, step: int, train_state) -> None:
  """Saves `train_state` as `step` (async) with its checksums; a state with
  a NaN or inf anywhere is not saved (Diverged); a failed earlier save
  surfacing here is a SaveFailed."""
  sums, finite = inspect(train_state)
  if not finite:
    raise Diverged(f"The parameters or optimizer state hold NaN or inf after "
                   f"step {step}; it is not saved. Checkpoints before it are "
                   "kept.")
  workdir = os.path.dirname(str(mgr.directory))
  try:  # Orbax waits for the previous save anyway; its files count.
    mgr.wait_until_finished()
  except Exception as e:
    raise failure(workdir, e) from e
  need = sum(x.nbytes for x in jax.tree.leaves(train_state)) // (
      jax.process_count()) + (64 << 10)  # Its shards, and metadata.
  free = free_bytes(str(mgr.directory))
  if free is not None and free < need:
    raise SaveFailed(
        f"Not enough free space in {workdir}/checkpoints for checkpoint "
        f"{step}: it needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} "
        "MiB are free. Stopping; the checkpoints before it are kept.")
  if jax.process_index() == 0:
    path = _checksum_path(workdir, step)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(sums, f)
    os.replace(path + ".tmp", path)
  try:
    mgr.save(step, args=ocp.args.StandardSave(train_state))
  except Exception as e:  # Orbax re-raises an earlier async save's error.
    raise failure(workdir, e) from e
  if jax.process_index() == 0:  # Those of checkpoints rotated away.
    kept = set(mgr.all_steps()) | {step}
    for name in os.listdir(os.path.dirname(path)):
      if name.endswith(".json") and name[:-5].isdigit() and (
          int(name[:-5]) not in kept):
        os.remove(os.path.join(os.path.dirname(path), name))


def _verify(tree, workdir: str, step: int, path: str, older: str) -> None:
  """Raises CheckpointError if `tree` (restored) differs from the checksums
  written at save, holds a NaN or inf, or cannot be verified (its checksum
  file is missing or unreadable: verification is never silently off)."""
  sums, finite = inspect(tree)
  expected_path = _checksum_path(workdir, step)
  try:
    with open(expected_path) as f:
      expected = json.load(f)
    if not isinstance(expected, dict):
      raise ValueError("not a JSON object")
  except FileNotFoundError:
    raise CheckpointError(f"Checkpoint {path} cannot be verified: its "
                          f"checksum file {expected_path} is missing. "
                          f"{older}") from None
  except (OSError, ValueError) as e:
    raise CheckpointError(f"Checkpoint {path} cannot be verified: its "
                          f"checksum file {expected_path} is unreadable "
                          f"({e}). {older}") from None
  bad = sorted(k for k in sums if k in expected and expected[k] != sums[k])
  if bad or not finite:
    what = (f"{len(bad)} array(s) differ from the checksums written when it "
            f"was saved ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''})"
            if bad else "it holds NaN or inf")
    raise CheckpointError(f"Checkpoint {path} is corrupt: {what}. {older}")


# --- Restoring ----------------------------------------------------------------
def steps(workdir: str) -> list[int]:
  """The steps saved in WORKDIR/checkpoints (sorted), or [] if none."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(name) for name in os.listdir(path) if name.isdigit() and
                os.path.isdir(os.path.join(path, name, "default")))


def set_aside_after(workdir: str, step: int) -> list[str]:
  """Moves the checkpoints after `step` (and their checksums) into
  WORKDIR/set_aside/, so a run resumes from `step`; says what it moved.
  NotFound if there is no checkpoint `step`."""
  have = steps(workdir)
  if step not in have:
    raise NotFound(f"--resume_from {step}: no checkpoint of step {step} in "
                   f"{workdir!r}; have steps {have}.")
  root = os.path.abspath(workdir)
  moved = []
  for later in (s for s in have if s > step):
    target = os.path.join(root, "set_aside", f"{later}-{time.time_ns()}")
    os.makedirs(target)
    os.rename(os.path.join(root, "checkpoints", str(later)),
              os.path.join(target, "checkpoint"))
    if os.path.exists(_checksum_path(workdir, later)):
      os.rename(_checksum_path(workdir, later),
                os.path.join(target, "checksums.json"))
    moved.append(f"set checkpoint {later} aside in {target}")
  return moved


def _summary(error: Exception) -> str:
  """The first line of an Orbax / TensorStore error, without its dump."""
  text = str(error).split("\n")[0].split(" See full TensorStore")[0]
  return (text if isinstance(error, FileNotFoundError) else
          f"{type(error).__name__}: {text[:200]}")


def _advice(workdir: str, step: int) -> str:
  """What to do about a bad checkpoint `step`."""
  older = [s for s in steps(workdir) if s < step]
  return (f"Add --resume_from {older[-1]} to resume from step {older[-1]} "
          "(the later checkpoints are set aside), or use another --workdir."
          if older else "Remove it to start afresh, or use another "
          "--workdir.")


class _QuietOrbax:
  """Orbax logs a warning or a traceback for each unreadable array; the
  CheckpointError says it once."""

  def __enter__(self):
    self.logger = logging.getLogger("absl")
    self.level = self.logger.level
    self.logger.setLevel(logging.CRITICAL)

  def __exit__(self, *exc):
    self.logger.setLevel(self.level)


def _saved_tree(path: str) -> dict:
  """Flat {path tuple: metadata with .shape} of a checkpoint's arrays."""
  with ocp.PyTreeCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(os.path.join(path, "default"))
  if metadata is None or metadata.item_metadata is None:
    raise FileNotFoundError("its metadata (default/_METADATA, manifest) is "
                            "missing or unreadable")
  return traverse_util.flatten_dict(metadata.item_metadata.tree)


def _saved_params(path: str) -> dict:
  """Flat {path tuple: metadata with .shape} of a checkpoint's parameters."""
  return {k[1:]: v for k, v in _saved_tree(path).items() if k[0] == "params"}


def _check_config(saved: dict, target: dict, path: str) -> None:
  """Raises CheckpointError if the checkpoint's parameter shapes are not the
  config's."""
  differ = [("/".join(k), tuple(saved[k].shape) if k in saved else None,
             tuple(target[k].shape) if k in target else None)
            for k in sorted(saved.keys() | target.keys())
            if k not in saved or k not in target or
            tuple(saved[k].shape) != tuple(target[k].shape)]
  if differ:
    name, was, now = differ[0]
    raise CheckpointError(
        f"Checkpoint {path} was saved with a different config: "
        f"{len(differ)} parameter(s) differ, e.g. {name} is {was} there and "
        f"{now} in this config. Resume with the run's own config "
        f"(--config {os.path.dirname(os.path.dirname(path))}/config.json) or "
        "use another --workdir.")


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """The newest (or given) checkpoint restored into `abstract_state`'s
  layout and verified; None when the workdir has no checkpoint. Nothing on
  disk is changed."""
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  path = os.path.join(str(mgr.directory), str(step))
  workdir = os.path.dirname(str(mgr.directory))
  with _QuietOrbax():
    try:
      saved = _saved_params(path)
    except Exception as e:  # Orbax raises many types for unreadable data.
      raise CheckpointError(f"Checkpoint {path} is unreadable "
                            f"({_summary(e)}). {_advice(workdir, step)}"
                            ) from e
    _check_config(saved, traverse_util.flatten_dict(abstract_state.params),
                  path)
    try:
      restored = mgr.restore(step, args=ocp.args.StandardRestore(
          abstract_state))
    except Exception as e:
      raise CheckpointError(f"Checkpoint {path} is unreadable "
                            f"({_summary(e)}). {_advice(workdir, step)}"
                            ) from e
  _verify(restored, workdir, step, path, _advice(workdir, step))
  return restored


def restore_params(workdir: str, abstract_params, step: int | None = None
                   ) -> tuple[dict, int]:
  """(params, step): `restore_variables` of the parameters alone."""
  variables, step = restore_variables(workdir, {"params": abstract_params},
                                      step)
  return variables["params"], step


def restore_variables(workdir: str, abstract_variables: dict,
                      step: int | None = None) -> tuple[dict, int]:
  """(variables, step) of a run's newest (or given) checkpoint: the model's
  collections ("params", and e.g. "batch_stats" saved in its model state)
  that the target `abstract_variables` (ShapeDtypeStructs with shardings)
  also has.

  Each array is read straight into its target sharding; one saved with
  another shape (a fine-tune at another image size or class count) is read
  in its saved shape, sharded like its target where the mesh divides it,
  for the model family's `adapt_params`. Arrays the checkpoint lacks are
  absent from the result. The arrays are verified like `restore`'s.
  """
  have = steps(workdir)
  if not have:
    raise NotFound(f"No checkpoints in {workdir!r}.")
  step = have[-1] if step is None else step
  if step not in have:
    raise NotFound(f"No checkpoint of step {step} in {workdir!r}; have steps "
                   f"{have}.")
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step))
  # Where TrainState keeps each collection: params, model_state/NAME.
  where = {name: ("params",) if name == "params" else ("model_state", name)
           for name in abstract_variables}
  with _QuietOrbax():
    try:
      saved = _saved_tree(path)
      target = {}
      for name, tree in abstract_variables.items():
        for key, want in traverse_util.flatten_dict(tree).items():
          if where[name] + key in saved:
            shape = tuple(saved[where[name] + key].shape)
            target[where[name] + key] = jax.ShapeDtypeStruct(
                shape, want.dtype,
                sharding=sharding.refit(want.sharding, shape))
      target = traverse_util.unflatten_dict(target)
      with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            os.path.join(path, "default"), args=ocp.args.PyTreeRestore(
                item=target, partial_restore=True,
                restore_args=ocp.checkpoint_utils.construct_restore_args(
                    target)))
    except Exception as e:  # Orbax raises many types for unreadable data.
      raise CheckpointError(f"Could not read the parameters of checkpoint "
                            f"{path} ({_summary(e)}).") from e
  _verify(restored, workdir, step, path, "Use another step (--step).")
  variables = {"params": restored.get("params", {}),
               **restored.get("model_state", {})}
  return {name: variables.get(name, {}) for name in abstract_variables}, step
