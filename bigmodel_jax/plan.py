"""Plans a config ahead of time: compiles its train step on abstract arrays.

  python -m bigmodel_jax.plan --config experiments/vit_imagenet.py \\
      [--devices 512] [--device_memory_gib 80] [--config.mesh.fsdp=64 ...]

No weights are allocated and no data is read: the state and the batch are
`jax.ShapeDtypeStruct`s with their shardings, the train step is lowered and
compiled, and the compiled executable's memory analysis gives per-device
bytes. Prints parameters, training FLOPs per token/example, per-device
parameter, optimizer and temporary memory, and whether it fits
`--device_memory_gib`.

The devices are the ones at hand, or with `--devices N` N CPU devices made
for the plan (a GPU or TPU topology that is not here: its device count, and
`--device_memory_gib` for its memory). XLA:CPU compiles the program then, so
parameter and optimizer bytes are exact and temporaries are the CPU
compiler's (no fused flash attention: attention scores are counted). Up to
2,048 devices plan in under a minute on a 2-core machine; 4,096 fail in
XLA:CPU ("Multiprocess computations aren't implemented").
"""
import math
import time

import jax

from bigmodel_jax import config_loader, experiment, sharding
from bigmodel_jax.errors import entrypoint

MAX_CPU_DEVICES = 2048  # 4,096 fail in XLA:CPU (JAX 0.10.2).


def _per_device_bytes(tree) -> int:
  """Bytes of one device's shards of an abstract tree with shardings."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def plan(config, devices=None) -> dict:
  """Compiles the train step abstractly; returns sizes, FLOPs and memory."""
  exp = experiment.build(config, devices, load_data=False)
  abstract = exp.factory.abstract
  batch = exp.train_batch_spec()
  start = time.perf_counter()
  with exp.layout.context():  # The jitted step under in_context.
    compiled = exp.train_step.__wrapped__.lower(
        abstract, batch, jax.random.key(0)).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  params = _per_device_bytes(abstract.params)
  state = _per_device_bytes(abstract)
  temp = memory.temp_size_in_bytes if memory else float("nan")
  arguments = memory.argument_size_in_bytes if memory else float("nan")
  return {
      "mesh": dict(exp.mesh.shape),
      "devices": f"{exp.mesh.size}x {exp.mesh.devices.flat[0].device_kind}",
      "parameters": exp.num_params(),
      "flops_per_item": exp.flops_per_item(),
      "params_bytes": params,
      "optimizer_bytes": state - params,
      "temp_bytes": temp,
      "argument_bytes": arguments,  # State + batch, per device (compiled).
      "total_bytes": state + temp,
      "compile_seconds": compile_s,
      "fallbacks": sharding.describe_fallbacks(exp.factory.fallbacks),
  }


def format_plan(result: dict, device_memory_gib: float | None) -> str:
  gib = 2.0**30
  lines = [
      f"mesh           {result['mesh']} on {result['devices']}",
      f"parameters     {result['parameters'] / 1e6:,.2f}M",
      f"train FLOPs    {result['flops_per_item']:.3e} per token/example",
      "per-device memory (compiled train step):",
      f"  parameters   {result['params_bytes'] / gib:8.3f} GiB",
      f"  optimizer    {result['optimizer_bytes'] / gib:8.3f} GiB "
      "(and other state, e.g. BatchNorm statistics)",
      f"  temporaries  {result['temp_bytes'] / gib:8.3f} GiB "
      "(activations, gradients, workspace)",
      f"  total        {result['total_bytes'] / gib:8.3f} GiB",
      f"compile        {result['compile_seconds']:.1f} s",
  ]
  lines += [f"not sharded    {line}" for line in result["fallbacks"]]
  if device_memory_gib:
    fits = result["total_bytes"] <= device_memory_gib * gib
    lines.append(f"fits {device_memory_gib:g} GiB per device: "
                 f"{'yes' if fits else 'NO'}")
  return "\n".join(lines)


@entrypoint
def main(argv=None) -> None:
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("--device_memory_gib", type=float, default=None)
  parser.add_argument("--devices", type=int, default=None,
                      help="plan for this many (CPU) devices")
  args, config = config_loader.parse_args(parser, argv)
  devices = None
  if args.devices is not None and not 1 <= args.devices <= MAX_CPU_DEVICES:
    parser.error(f"--devices must be 1 to {MAX_CPU_DEVICES:,} (XLA:CPU "
                 "compiles for at most that many here).")
  if args.devices:  # Before anything starts the CPU backend.
    jax.config.update("jax_num_cpu_devices", args.devices)
    devices = jax.devices("cpu")
  print(format_plan(plan(config, devices), args.device_memory_gib))


if __name__ == "__main__":
  main()
