"""Steady-state training throughput of an experiment config.

  python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
      python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu

Prints one table row: tokens/s (images/s for image models) per device, step
time, compile time, peak memory and MFU (n/a where the device's peak FLOP/s is
unknown, e.g. CPU); language models get MFU under two conventions, nanoGPT's
6N + 12 L H Q T and MaxText's with causal attention counted at half. `--synthetic`
reads no data: it feeds one random batch of the config's shapes, so the input
pipeline is out of the measurement and datasets that are not prepared here
(imagenet2012) can still be timed; the model's vocab_size / num_classes must
then be in the config:

  python scripts/benchmark.py --config experiments/vit_imagenet.py --synthetic \
      --config.input.batch_size=256
"""
import resource
import time

import jax
import numpy as np

from bigmodel_jax import config_loader, experiment, perf, registry
from bigmodel_jax.models import gpt


def peak_memory_mb() -> float:
  """Peak device memory where the backend reports it, else peak host RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_batch(exp) -> dict:
  """A random global batch of the config's shapes, sharded like real ones."""
  spec = registry.get("data", exp.config.input.name).batch_spec(
      exp.config.input)
  high = exp.config.model.get("vocab_size") or exp.config.model.num_classes
  rng = np.random.default_rng(0)
  batch = {k: (rng.integers(0, high, v.shape) if v.dtype.kind == "i"
               else rng.uniform(size=v.shape)).astype(v.dtype)
           for k, v in spec.items()}
  return jax.device_put(batch, exp.layout.batch_sharding())


def main(argv=None) -> None:
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--warmup_steps", type=int, default=10)
  parser.add_argument("--synthetic", action="store_true")
  args, config = config_loader.parse_args(parser, argv)

  exp = experiment.build(config, load_data=not args.synthetic)
  state = exp.factory.init(jax.random.key(0))
  rng = jax.random.key(1)
  if args.synthetic:
    fixed = synthetic_batch(exp)
  else:
    batches = exp.data.train_batches(0)

  def run(n, state):
    for _ in range(n):
      batch = fixed if args.synthetic else exp.global_batch(next(batches))
      state, metrics = exp.train_step(state, batch, rng)
    jax.block_until_ready(metrics)
    return state

  start = time.perf_counter()
  state = run(1, state)
  compile_s = time.perf_counter() - start
  state = run(args.warmup_steps, state)
  start = time.perf_counter()
  state = run(args.steps, state)
  step_s = (time.perf_counter() - start) / args.steps

  unit, items_per_batch = exp.units()
  items_per_sec = items_per_batch / step_s
  utilisation = perf.mfu(items_per_sec, exp.flops_per_item())
  mfu = "n/a" if utilisation is None else f"{utilisation:.1%}"
  if exp.family is gpt:  # MaxText's convention too.
    causal = perf.mfu(items_per_sec, gpt.flops_per_item_causal(
        exp.model, exp.factory.abstract.params,
        exp.factory.example_inputs.shape))
    mfu += " / " + ("n/a" if causal is None else f"{causal:.1%}")
  print(f"| config | devices | mesh | {unit}/s/device | step ms | compile s "
        "| peak MiB | MFU (6N+12LHQT / causal) |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.config} | {jax.device_count()}x {jax.devices()[0].device_kind} "
        f"| {dict(exp.mesh.shape)} | {items_per_sec / jax.device_count():,.0f} "
        f"| {step_s * 1e3:.1f} "
        f"| {compile_s:.1f} | {peak_memory_mb():,.0f} | {mfu} |")


if __name__ == "__main__":
  main()
