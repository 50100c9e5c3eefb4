"""Throughput accounting: tokens/s, model FLOPs utilisation (MFU) and ETA."""
import contextlib
import time

import jax

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


def peak_flops(device=None) -> float | None:
  """Peak FLOP/s of one device, or None where unknown (e.g. CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)


def mfu(tokens_per_sec: float, flops_per_token: float) -> float | None:
  """Model FLOPs utilisation over all devices; None where peak is unknown."""
  peak = peak_flops()
  if not peak:
    return None
  return tokens_per_sec * flops_per_token / (peak * jax.device_count())


class Meter:
  """Measures training throughput between calls of `tick`."""

  def __init__(self, tokens_per_step: int, flops_per_token: float,
               total_steps: int):
    self.tokens_per_step = tokens_per_step
    self.flops_per_token = flops_per_token
    self.total_steps = total_steps
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
    tokens_per_sec = self.tokens_per_step / step_time
    out = {"train/tokens_per_sec": tokens_per_sec,
           "train/step_time": step_time,
           "eta_seconds": step_time * (self.total_steps - step)}
    utilisation = mfu(tokens_per_sec, self.flops_per_token)
    if utilisation is not None:
      out["train/mfu"] = utilisation
    return out
