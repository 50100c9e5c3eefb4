"""Compresses a trained run into a new, self-contained run directory.

  python -m bigmodel_jax.compress --workdir runs/x --out runs/x-int8 --method int8
      --method float32                 the parameters alone (no optimizer state)
      --method bf16                    parameters stored in bfloat16
      --method int8 | int4 | w8a8      qwix quantization (see quantization.py);
                                       --group_size N (0: per channel; int4's
                                       default 32, halved until it fits)
      --method sparse --sparsity 0.5   magnitude pruning; --scope global|layer,
                                       --pattern 2:4
      --method heads --keep_heads 0.5 [--keep_mlp 0.5]
                                       whole attention heads / MLP units removed

The output holds config.json (the source's, with a `compression` block
naming method, options and source; model fields changed where the method
changes the shapes), the source's tokenizer, class names and chat template,
and one checkpoint of the model's variables at the source's step (int4
packed two to a byte). `sample`, `evaluate` and serving load it like any
run. LoRA adapters are merged first. The source run is only read; the
output appears only when complete. Prints parameters, nonzero parameters
and the size on disk.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
from flax import traverse_util

from bigmodel_jax import (checkpoints, config_loader, families, pruning,
                          quantization, runs, state, workdirs)
from bigmodel_jax.errors import ConfigError, entrypoint

METHODS = ("float32", "bf16", *quantization.METHODS, "sparse", "heads")
# Run products not carried over; every other top-level file is.
_NOT_COPIED = ("config.json", "metrics.jsonl", ".lock")


def _float_params(run, model_config):
  """The run's float parameters, LoRA adapters merged."""
  params = run.params
  if model_config.get("lora_rank"):
    params = families.merged(params, model_config)
    model_config.lora_rank = 0
  return params


def _quantized(run, model_config, params, block):
  """(variables as stored, description) under qwix PTQ."""
  model = run.family.make(model_config)
  args = runs.example_args(run.task, run.config)
  qmodel = quantization.ptq_model(model, block, params, args)
  target = state.abstract_variables(qmodel, run.layout, args)
  out_shardings = jax.tree.map(lambda x: x.sharding, target["params"])
  with run.layout.context():
    qparams = jax.jit(lambda p: quantization.quantize(p, target["params"]),
                      out_shardings=out_shardings)(params)
  return quantization.to_pure(qparams)


def _pruned_structure(run, model_config, params, keep_heads, keep_mlp):
  """Parameters without the weakest heads / hidden units; `model_config`
  updated to the smaller shapes."""
  boxed = jax.eval_shape(run.family.make(model_config).init,
                         jax.random.key(0), *runs.example_args(run.task, run.config))["params"]
  names = pruning.named_axes(boxed)
  flat = traverse_util.flatten_dict(params)
  shapes = {name: flat[p].shape[names[p].index(name)]
            for p in names for name in names[p] if name in ("heads", "mlp")}
  if "heads" not in shapes or "mlp" not in shapes or not all(
      k in model_config for k in ("num_heads", "head_dim", "mlp_dim")):
    raise ConfigError(f"Model {model_config.name!r} has no attention heads "
                      "and MLP units to remove; use --method sparse.")
  kv = model_config.get("num_kv_heads")
  if kv and kv != model_config.num_heads:
    raise ConfigError(f"Head pruning needs num_kv_heads == num_heads; this "
                      f"model has {kv} key/value heads for "
                      f"{model_config.num_heads}.")
  heads = max(1, round(shapes["heads"] * keep_heads))
  hidden = max(1, round(shapes["mlp"] * keep_mlp))
  head_size = next(flat[p].shape[names[p].index("kv")] for p in names
                   if "kv" in names[p])
  flat = pruning.remove_units(flat, names, ("heads", "kv_heads"), heads)
  flat = pruning.remove_units(flat, names, ("mlp",), hidden)
  model_config.num_heads, model_config.head_dim = heads, head_size
  model_config.mlp_dim = hidden
  if kv:
    model_config.num_kv_heads = heads
  return traverse_util.unflatten_dict(flat)


def compress(run, args) -> tuple[dict, dict, dict, tuple]:
  """(model config, variables to store, compression block, (nonzero, all)
  parameters before quantization) of `run`."""
  config = run.config.model.copy_and_resolve_references()
  params = _float_params(run, config)
  others = {k: v for k, v in run.variables.items() if k != "params"}
  block = {"method": args.method, "source": os.path.abspath(args.workdir),
           "source_step": run.step}
  if args.method == "bf16":
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    config.param_dtype = "bfloat16"
  elif args.method == "sparse":
    pruning.check(args.sparsity, args.scope, args.pattern)
    params = pruning.apply_masks(params, pruning.masks(
        params, args.sparsity, args.scope, args.pattern))
    block.update(sparsity=args.sparsity, scope=args.scope,
                 pattern=args.pattern)
  elif args.method == "heads":
    for flag in ("keep_heads", "keep_mlp"):
      if not 0 < getattr(args, flag) <= 1:
        raise ConfigError(f"--{flag}={getattr(args, flag)}: it must be in "
                          "(0, 1].")
    params = _pruned_structure(run, config, params, args.keep_heads,
                               args.keep_mlp)
    block.update(keep_heads=args.keep_heads, keep_mlp=args.keep_mlp)
  counts = pruning.nonzero(params)
  if args.method in quantization.METHODS:
    block["group_size"] = quantization.group_size(
        run.family.make(config), {**block, "group_size": args.group_size},
        params, runs.example_args(run.task, run.config))
    params = _quantized(run, config, params, block)
  return config, {"params": params, **others}, block, counts


def disk_bytes(path: str) -> int:
  return sum(os.path.getsize(os.path.join(d, f))
             for d, _, files in os.walk(path) for f in files)


def write(staging: str, source: str, run, model_config, variables,
          block) -> None:
  """The compressed run in `staging`: files, config, one checkpoint."""
  for name in os.listdir(source):
    path = os.path.join(source, name)
    if os.path.isfile(path) and name not in _NOT_COPIED and not (
        name.startswith("events.out.tfevents")):
      shutil.copy(path, staging)
  config = config_loader.load_json(os.path.join(source, "config.json"))
  config.model = model_config
  config.quantization = {"method": None, "group_size": None}
  config.compression = block
  config_loader.save_json(config, os.path.join(staging, "config.json"))
  tree = {"params": variables["params"],
          "model_state": {k: v for k, v in variables.items() if k != "params"}}
  manager = checkpoints.manager(staging, keep=1, async_save=False)
  checkpoints.save(manager, run.step, tree)
  manager.wait_until_finished()
  manager.close()


@entrypoint
def main(argv=None) -> None:
  parser = runs.arg_parser(__doc__)
  parser.add_argument("--method", required=True, help=", ".join(METHODS))
  parser.add_argument("--group_size", type=int, default=None)
  parser.add_argument("--sparsity", type=float, default=0.5)
  parser.add_argument("--scope", default="global")
  parser.add_argument("--pattern", default=None)
  parser.add_argument("--keep_heads", type=float, default=0.5)
  parser.add_argument("--keep_mlp", type=float, default=1.0)
  args = parser.parse_args(argv)
  if args.method not in METHODS:
    raise ConfigError(f"Unknown --method {args.method!r}; have "
                      f"{', '.join(METHODS)}.")
  if os.path.abspath(args.out) == os.path.abspath(args.workdir):
    raise ConfigError("--out must be a new directory, not the source run.")

  with workdirs.new_directory(args.out) as staging:
    run = runs.load(args.workdir, args.step)
    done = run.config.get("compression") or {}
    if done.get("method") not in (None, "float32"):
      raise ConfigError(
          f"{args.workdir} is already compressed ({done['method']}, from "
          f"{done.get('source')}); compress that float run instead.")
    model_config, variables, block, (count, total) = compress(run, args)
    write(staging, args.workdir, run, model_config, variables, block)
    size = disk_bytes(os.path.join(staging, "checkpoints"))
  print(f"compressed {args.workdir} (step {run.step}) with {args.method} to "
        f"{args.out}: {total:,} parameters ({count:,} nonzero), "
        f"{size / 2**20:.2f} MiB on disk. {json.dumps(block)}")


if __name__ == "__main__":
  main()
