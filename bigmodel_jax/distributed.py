"""Multi-process start-up: `jax.distributed.initialize` when the environment asks.

Call `initialize()` before anything touches a JAX backend. It connects the
processes of one job when
  * JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES and JAX_PROCESS_ID
    are set (any launcher, e.g. one process per GPU or a localhost test), or
  * SLURM started several tasks (SLURM_NTASKS > 1), or
  * a multi-host Cloud TPU slice is detected (TPU_WORKER_HOSTNAMES lists
    several hosts);
otherwise it does nothing (one process). On CPU, collectives between
processes go through gloo.
"""
import os

import jax


def requested(env=os.environ) -> bool:
  """Whether the environment describes a job of several processes."""
  return ("JAX_COORDINATOR_ADDRESS" in env or
          int(env.get("SLURM_NTASKS", "1")) > 1 or
          "," in env.get("TPU_WORKER_HOSTNAMES", ""))


def initialize(env=os.environ) -> None:
  if not requested(env):
    return
  if env.get("JAX_PLATFORMS", "").startswith("cpu"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if "JAX_COORDINATOR_ADDRESS" in env:
    jax.distributed.initialize(
        coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
        num_processes=int(env["JAX_NUM_PROCESSES"]),
        process_id=int(env["JAX_PROCESS_ID"]))
  else:  # SLURM and Cloud TPU are detected by JAX itself.
    jax.distributed.initialize()
