"""Steady-state training throughput of an experiment config.

  python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu
  XLA_FLAGS=--xla_force_host_platform_device_count=2 \\
      python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu

Prints one table row: tokens/s, step time, compile time, peak memory and MFU
(n/a where the device's peak FLOP/s is unknown, e.g. CPU). `--synthetic`
feeds one fixed batch so the input pipeline is out of the measurement.
"""
import argparse
import resource
import time

import jax

from bigmodel_jax import config_lib, experiment, perf


def peak_memory_mb() -> float:
  """Peak device memory where the backend reports it, else peak host RSS."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--warmup_steps", type=int, default=10)
  parser.add_argument("--synthetic", action="store_true")
  args, rest = parser.parse_known_args(argv)
  config = config_lib.load(args.config, config_lib.parse_overrides(rest))

  exp = experiment.build(config)
  state = exp.factory.init(jax.random.key(0))
  rng = jax.random.key(1)
  fixed = exp.global_batch(exp.data.train_batch(0))
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

  tokens_per_sec = exp.data.tokens_per_batch() / step_s
  utilisation = perf.mfu(tokens_per_sec, exp.model.flops_per_token(
      exp.factory.abstract.params, config.input.seq_len))
  mfu = "n/a" if utilisation is None else f"{utilisation:.1%}"
  print("| config | devices | mesh | tokens/s | step ms | compile s | "
        "peak MiB | MFU |")
  print("|---|---|---|---|---|---|---|---|")
  print(f"| {args.config} | {jax.device_count()}x {jax.devices()[0].device_kind} "
        f"| {dict(exp.mesh.shape)} | {tokens_per_sec:,.0f} | {step_s * 1e3:.1f} "
        f"| {compile_s:.1f} | {peak_memory_mb():,.0f} | {mfu} |")


if __name__ == "__main__":
  main()
