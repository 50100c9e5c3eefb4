"""Orbax checkpoints in WORKDIR/checkpoints, restored into the sharded target.

`restore` brings back a whole train state (resuming); `restore_params` only
the parameters (sampling, fine-tuning, serving), read shard by shard into
the layout of the current mesh: no optimizer moments, no unsharded copy.
"""
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import traverse_util

from bigmodel_jax import sharding


def manager(workdir: str, *, keep: int | None = None, async_save: bool = True
            ) -> ocp.CheckpointManager:
  """Saves (async) the steps it is asked to, keeps the newest `keep`."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      enable_async_checkpointing=async_save, create=True)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def restore(mgr: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """The newest (or given) checkpoint restored into `abstract_state`'s layout.

  Returns None when the workdir has no checkpoint. A checkpoint that cannot be
  read raises an error naming it; nothing on disk is changed.
  """
  step = mgr.latest_step() if step is None else step
  if step is None:
    return None
  try:
    return mgr.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # Orbax raises many types for unreadable data.
    path = os.path.join(str(mgr.directory), str(step))
    raise RuntimeError(
        f"Could not restore checkpoint {path}: {type(e).__name__}: {e}\n"
        "It may be corrupt or from a different config. Move it aside to "
        "resume from an older checkpoint, or use another --workdir.") from e


def steps(workdir: str) -> list[int]:
  """The steps saved in WORKDIR/checkpoints (sorted), or [] if none."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(path):
    return []
  return sorted(int(name) for name in os.listdir(path) if name.isdigit() and
                os.path.isdir(os.path.join(path, name, "default")))


def restore_params(workdir: str, abstract_params, step: int | None = None
                   ) -> tuple[dict, int]:
  """(params, step) of a run's newest (or given) checkpoint, only those the
  target `abstract_params` (ShapeDtypeStructs with shardings) also has.

  Each array is read straight into its target sharding; one saved with
  another shape (a fine-tune at another image size or class count) is read
  in its saved shape, sharded like its target where the mesh divides it,
  for the model family's `adapt_params`. Parameters the checkpoint lacks
  are absent from the result.
  """
  have = steps(workdir)
  if not have:
    raise FileNotFoundError(f"No checkpoints in {workdir!r}.")
  step = have[-1] if step is None else step
  if step not in have:
    raise FileNotFoundError(f"No checkpoint of step {step} in {workdir!r}; "
                            f"have steps {have}.")
  path = os.path.join(os.path.abspath(workdir), "checkpoints", str(step),
                      "default")
  absl = logging.getLogger("absl")
  level = absl.level
  absl.setLevel(logging.ERROR)  # Orbax warns of a step-level metadata file.
  try:
    with ocp.PyTreeCheckpointer() as checkpointer:
      saved = traverse_util.flatten_dict(
          checkpointer.metadata(path).item_metadata.tree["params"])
      target = {}
      for key, want in traverse_util.flatten_dict(abstract_params).items():
        if key in saved:
          shape = tuple(saved[key].shape)
          target[key] = jax.ShapeDtypeStruct(
              shape, want.dtype, sharding=sharding.refit(want.sharding, shape))
      target = {"params": traverse_util.unflatten_dict(target)}
      restored = checkpointer.restore(path, args=ocp.args.PyTreeRestore(
          item=target, partial_restore=True,
          restore_args=ocp.checkpoint_utils.construct_restore_args(target)))
  except Exception as e:  # Orbax raises many types for unreadable data.
    raise RuntimeError(f"Could not read the parameters of checkpoint {path}: "
                       f"{type(e).__name__}: {e}") from e
  finally:
    absl.setLevel(level)
  return restored["params"], step
