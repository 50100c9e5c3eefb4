"""Steady-state training throughput: one config, nanoGPT beside it, or a suite.

  python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu
  # The same recipe through nanoGPT's own train.py (a checkout of
  # github.com/karpathy/nanoGPT and PyTorch), on the same machine and tokens:
  python scripts/benchmark.py --config experiments/gpt_shakespeare_char.py:cpu \\
      --nanogpt ~/src/nanoGPT
  # The accelerator suite (GPT-2 124M, llama-1B FSDP, ViT-B/16, BERT-base),
  # one markdown table with the device's name, written to --out:
  python scripts/benchmark.py --suite gpu --out docs/benchmark_gpu.md

Prints a table row per measurement: items (tokens, images or sequences) per
second per device, step time, compile time, peak memory and MFU (n/a where
the device's peak FLOP/s is unknown, e.g. CPU); language models get MFU under
two conventions, nanoGPT's 6N + 12 L H Q T and MaxText's with causal
attention counted at half. `--synthetic` reads no data: it feeds one random
batch of the config's shapes, so the input pipeline is out of the
measurement and datasets that are not prepared here (imagenet2012) can be
timed; the model's vocab_size / num_classes must then be in the config. The
suite is always synthetic; `--tiny` shrinks every suite entry to a few
layers, to check the suite itself on a CPU.
"""
import argparse
import os
import pickle
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from bigmodel_jax import config_loader, experiment, perf, registry
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.steps import bounded
from bigmodel_jax.models import gpt

# name -> (config, overrides, (divisor, unit) for the table or None, extra
# overrides under --tiny). GPT-2 124M is timed under each remat policy.
_TINY = {"model.num_layers": 1, "model.emb_dim": 64, "model.num_heads": 2,
         "input.batch_size": 8}
_TINY_GPT = {**_TINY, "input.seq_len": 64, "model.attention_impl": "xla"}
SUITE = {
    "GPT-2 124M": ("experiments/gpt_scale.py:124M", {
        "input.batch_size": 32, "model.attention_impl": "cudnn"}, None,
                   _TINY_GPT),
    "llama-1B FSDP": ("experiments/gpt_scale.py:llama-1B", {
        "input.batch_size": 8, "input.seq_len": 2048,
        "model.attention_impl": "cudnn"}, None, {
            **_TINY_GPT, "model.num_kv_heads": 1, "model.mlp_dim": 128,
            "input.vocab_size": 512}),
    "ViT-B/16": ("experiments/vit_imagenet.py", {"input.batch_size": 256},
                 None, {**_TINY, "model.mlp_dim": 128}),
    "BERT-base": ("experiments/bert_mlm.py", {
        "model.num_layers": 12, "model.emb_dim": 768, "model.num_heads": 12,
        "model.mlp_dim": 3072, "model.vocab_size": 30522,
        "model.max_positions": 512, "model.dtype": "bfloat16",
        "input.seq_len": 128, "input.batch_size": 256}, (128, "sequences"),
                  {**_TINY, "model.mlp_dim": 128, "model.vocab_size": 512}),
}
REMAT_TRIED = ("none", "minimal", "dots_saveable", "full")


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


def measure(config, steps: int, warmup_steps: int, synthetic: bool) -> dict:
  """Times `steps` train steps after `warmup_steps` (and the compiling one)."""
  exp = experiment.build(config, load_data=not synthetic)
  state = exp.factory.init(jax.random.key(0))
  rng = jax.random.key(1)
  if synthetic:
    fixed = synthetic_batch(exp)
  else:
    batches = exp.data.train_batches(0)

  def run(n, state):
    """`n` steps, queued as the trainer queues them (see `bounded`)."""
    before = None
    for _ in range(n):
      batch = fixed if synthetic else exp.global_batch(next(batches))
      state, metrics = exp.train_step(state, batch, rng)
      if before is not None:
        bounded(before)
      before = metrics
    return jax.block_until_ready(state)

  start = time.perf_counter()
  state = run(1, state)
  compile_s = time.perf_counter() - start
  state = run(warmup_steps, state)
  start = time.perf_counter()
  state = run(steps, state)
  step_s = (time.perf_counter() - start) / steps
  if not synthetic:
    batches.close()

  unit, items_per_batch = exp.units()
  items_per_sec = items_per_batch / step_s
  mfu = [perf.mfu(items_per_sec, exp.flops_per_item())]
  if exp.family is gpt:  # MaxText's convention too.
    mfu.append(perf.mfu(items_per_sec, gpt.flops_per_item_causal(
        exp.model, exp.factory.abstract.params,
        exp.factory.example_args)))
  return {"unit": unit, "per_sec": items_per_sec / jax.device_count(),
          "step_ms": step_s * 1e3, "compile_s": compile_s,
          "peak_mib": peak_memory_mb(), "mesh": dict(exp.mesh.shape),
          "mfu": " / ".join("n/a" if m is None else f"{m:.1%}" for m in mfu)}


def devices() -> str:
  return f"{jax.device_count()}x {jax.devices()[0].device_kind}"


HEADER = ("| benchmark | devices | mesh | per second per device | step ms "
          "| compile s | peak MiB | MFU (6N+12LHQT / causal) |\n"
          "|---|---|---|---|---|---|---|---|")


def row(name: str, r: dict) -> str:
  compile_s, peak = (f"{r[k]:{f}}" if k in r else "n/a"
                     for k, f in (("compile_s", ".1f"), ("peak_mib", ",.0f")))
  return (f"| {name} | {r.get('devices') or devices()} | {r['mesh']} "
          f"| {r['per_sec']:,.0f} {r['unit']} | {r['step_ms']:.1f} "
          f"| {compile_s} | {peak} | {r['mfu']} |")


# --- nanoGPT, the reference ---------------------------------------------------

def nanogpt(checkout: str, config, steps: int, warmup_steps: int) -> dict:
  """nanoGPT's own train.py on the recipe of a `gpt` + `char_lm` config (same
  shapes, optimizer, schedule, tokens), float32 on CPU without torch.compile
  as nanoGPT's README runs it: the median of its per-iteration times after
  the warmup (its first iteration also evaluates)."""
  m, o, i = config.model, config.optimizer, config.input
  exp = experiment.build(config)  # The same training tokens as ours.
  with tempfile.TemporaryDirectory() as work:
    data = os.path.join(work, "data", "bmj")
    os.makedirs(data)
    exp.data.train.tokens.astype(np.uint16).tofile(f"{data}/train.bin")
    exp.data.train.tokens[-10 * i.seq_len:].astype(np.uint16).tofile(
        f"{data}/val.bin")
    with open(f"{data}/meta.pkl", "wb") as f:
      pickle.dump({"vocab_size": exp.data.vocab_size}, f)
    os.symlink(os.path.join(checkout, "configurator.py"),
               os.path.join(work, "configurator.py"))
    args = dict(
        dataset="bmj", out_dir=os.path.join(work, "out"), device="cpu",
        compile=False, dtype="float32", eval_interval=10**9, eval_iters=1,
        log_interval=1, always_save_checkpoint=False, wandb_log=False,
        gradient_accumulation_steps=1, batch_size=i.batch_size,
        block_size=i.seq_len, n_layer=m.num_layers, n_head=m.num_heads,
        n_embd=m.emb_dim, dropout=m.dropout, bias=m.use_bias,
        learning_rate=o.learning_rate, min_lr=o.min_learning_rate,
        warmup_iters=o.warmup_steps, lr_decay_iters=config.total_steps,
        beta2=o.b2, weight_decay=o.weight_decay, grad_clip=o.grad_clip_norm,
        max_iters=warmup_steps + steps)
    command = [sys.executable, os.path.join(checkout, "train.py")] + [
        f"--{k}={v}" for k, v in args.items()]
    out = subprocess.run(command, cwd=work, capture_output=True, text=True)
    torch_threads = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True, text=True).stdout.strip()
  times = [float(t) for t in re.findall(r"^iter \d+: .*time ([\d.]+)ms",
                                         out.stdout, re.M)]
  if out.returncode or len(times) <= warmup_steps:
    raise RuntimeError(f"nanoGPT failed: {out.stderr[-2000:]}")
  step_ms = statistics.median(times[warmup_steps + 1:])
  tokens = i.batch_size * i.seq_len
  return {"unit": "tokens", "per_sec": tokens / step_ms * 1e3,
          "step_ms": step_ms, "mesh": "PyTorch eager", "mfu": "n/a",
          "devices": f"CPU, {torch_threads} torch threads"}


# --- The accelerator suite ----------------------------------------------------

def suite(steps: int, warmup_steps: int, tiny: bool) -> list[str]:
  """One table row per SUITE entry (GPT-2 124M: its fastest remat policy)."""
  rows = []
  for name, (spec, overrides, per, small) in SUITE.items():
    overrides = {**overrides, **(small if tiny else {})}
    policies = REMAT_TRIED if name.startswith("GPT-2") else (None,)
    best, notes = None, []
    for policy in policies:
      more = {} if policy is None else {"model.remat": policy}
      try:
        config = config_loader.load(spec, {**overrides, **more})
        r = measure(config, steps, warmup_steps, synthetic=True)
      except Exception as e:  # Out of memory, or cuDNN absent.
        notes.append(f"{policy or 'default'}: {type(e).__name__} "
                     f"{str(e).splitlines()[0][:120] if str(e) else ''}")
        continue
      if policy:
        notes.append(f"{policy}: {r['step_ms']:.1f} ms")
      if best is None or r["per_sec"] > best["per_sec"]:
        best = dict(r, remat=policy)
    if best is None:
      rows.append(f"| {name} | {devices()} | failed: {'; '.join(notes)} "
                  "| | | | | |")
      continue
    if per:
      best.update(unit=per[1], per_sec=best["per_sec"] / per[0])
    label = name + (f" (remat {best['remat']}; {', '.join(notes)})"
                    if best["remat"] else "")
    rows.append(row(label, best))
    print(rows[-1], flush=True)
  return rows


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", help="experiments/FILE.py[:variant]")
  parser.add_argument("--suite", choices=["gpu"])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--warmup_steps", type=int, default=10)
  parser.add_argument("--synthetic", action="store_true")
  parser.add_argument("--nanogpt", help="a nanoGPT checkout to time beside")
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--out", help="also write the table (markdown) here")
  args, rest = parser.parse_known_args(argv)
  if bool(args.config) == bool(args.suite):
    parser.error("give --config or --suite")
  print(HEADER)
  if args.suite:
    rows = suite(args.steps, args.warmup_steps, args.tiny)
  else:
    try:
      config = config_loader.load(args.config,
                                  config_loader.parse_overrides(rest))
    except ConfigError as e:
      parser.exit(2, f"error: {e}\n")
    rows = [row(args.config, measure(config, args.steps, args.warmup_steps,
                                     args.synthetic))]
    print(rows[-1], flush=True)
    if args.nanogpt:
      if (config.model.name, config.input.name) != ("gpt", "char_lm"):
        parser.exit(2, "error: --nanogpt needs a gpt model on char_lm input.\n")
      rows.append(row("nanoGPT train.py, same recipe", nanogpt(
          args.nanogpt, config, args.steps, args.warmup_steps)))
      print(rows[-1], flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write(f"Measured on {devices()}, {time.strftime('%Y-%m-%d')}, "
              f"JAX {jax.__version__}.\n\n{HEADER}\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
  main()
