"""Orbax checkpoints in WORKDIR/checkpoints, restored into the sharded target."""
import os

import orbax.checkpoint as ocp


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


def load_params(workdir: str, step: int | None = None) -> dict:
  """The parameters of another run's newest (or given) checkpoint, as arrays
  in whatever layout they were saved; for initialising a fine-tune."""
  path = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"No checkpoints in {workdir!r} to initialise "
                            "from (init_from.workdir).")
  with ocp.CheckpointManager(path) as mgr:
    step = mgr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {path}.")
    try:
      return mgr.restore(step, args=ocp.args.StandardRestore())["params"]
    except Exception as e:  # Orbax raises many types for unreadable data.
      raise RuntimeError(f"Could not read checkpoint {path}/{step}: "
                         f"{type(e).__name__}: {e}") from e
