"""Throughput accounting: tokens (or images) per second, MFU and ETA."""
import contextlib
import time

import jax
from flax import linen as nn

from bigmodel_jax.errors import ConfigError

# Dense bf16 peak FLOP/s per device (no sparsity), by `device_kind` prefix.
PEAK_FLOPS = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
}


def hms(seconds: float) -> str:
  seconds = int(seconds)
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def progress(items, total: int, label: str, every_seconds: float = 10.0):
  """Yields `items`; on process 0 prints "label i/total | ETA" every
  `every_seconds` (so only long loops, e.g. big evaluations, report)."""
  start = last = time.perf_counter()
  for i, item in enumerate(items, 1):
    yield item
    now = time.perf_counter()
    if now - last >= every_seconds and jax.process_index() == 0:
      last = now
      print(f"{label} {i}/{total} | ETA {hms((now - start) / i * (total - i))}",
            flush=True)


def peak_flops(device=None) -> float | None:
  """Peak FLOP/s of one device, or None where unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


def mfu(items_per_sec: float, flops_per_item: float) -> float | None:
  """Model FLOPs utilisation over all devices; None where peak is unknown."""
  peak = peak_flops()
  if not peak:
    return None
  return items_per_sec * flops_per_item / (peak * jax.device_count())


def training_flops_per_example(model, args: tuple) -> float:
  """3x the forward FLOPs XLA counts for one example of the model's `args`
  (`state.example_args`; nothing is run)."""
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *a.shape[1:]),
                                                    a.dtype), args)
  variables = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), *one))
  lowered = jax.jit(lambda v, a: model.apply(v, *a)).lower(variables, one)
  return 3 * float(lowered.cost_analysis()["flops"])


class Meter:
  """Measures training throughput between calls of `tick`.

  `unit` names what is counted ("tokens", "images"): metrics are
  `train/{unit}_per_sec`, `train/step_time`, `train/mfu` and `eta_seconds`.
  """

  def __init__(self, items_per_step: int, flops_per_item: float,
               total_steps: int, unit: str = "tokens"):
    self.items_per_step = items_per_step
    self.flops_per_item = flops_per_item
    self.total_steps = total_steps
    self.unit = unit
    self._last = None
    self.paused = 0.0

  @contextlib.contextmanager
  def pause(self):
    """Context for time that is not training (evals, checkpoints)."""
    start = time.perf_counter()
    try:
      yield
    finally:
      self.paused += time.perf_counter() - start

  def tick(self, step: int) -> dict:
    """Rates over the steps since the previous tick (empty on the first)."""
    now = time.perf_counter()
    last, self._last = self._last, (step, now, self.paused)
    if last is None or step == last[0]:
      return {}
    seconds = (now - last[1]) - (self.paused - last[2])
    step_time = seconds / (step - last[0])
    items_per_sec = self.items_per_step / step_time
    out = {f"train/{self.unit}_per_sec": items_per_sec,
           "train/step_time": step_time,
           "eta_seconds": step_time * (self.total_steps - step)}
    utilisation = mfu(items_per_sec, self.flops_per_item)
    if utilisation is not None:
      out["train/mfu"] = utilisation
    return out


class Profiler:
  """Traces steps `first`..`last` (config.profile_steps) for TensorBoard.

  The trace goes to WORKDIR/plugins/profile/, which TensorBoard's profile
  tab reads (`pip install tensorboard-plugin-profile`). Process 0 only.
  """

  def __init__(self, workdir: str, steps):
    self.workdir = workdir
    self.steps = tuple(steps) if steps and jax.process_index() == 0 else None
    if self.steps and not (len(self.steps) == 2 and
                           0 < self.steps[0] <= self.steps[1]):
      raise ConfigError(f"profile_steps must be (first, last), got {steps!r}.")

  def before(self, step: int) -> None:
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.workdir)

  def after(self, step: int, outputs) -> bool:
    """Stops after the last traced step; True when a trace was written."""
    if self.steps and step == self.steps[1]:
      jax.block_until_ready(outputs)
      jax.profiler.stop_trace()
      return True
    return False
