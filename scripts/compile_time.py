"""Train-step compile time against depth, scanned vs unrolled layers.

  python scripts/compile_time.py [--layers 4 8 16 32] [--config.key=value ...]

Compiles the train step of `experiments/gpt_scale.py:cpu` (or --config)
ahead of time (`bigmodel_jax.plan`) for each depth with
`model.scan_layers` on and off, and prints a markdown table of seconds.
"""
import argparse

from bigmodel_jax import config_loader, plan


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", default="experiments/gpt_scale.py:cpu")
  parser.add_argument("--layers", type=int, nargs="+", default=[4, 8, 16, 32])
  args, rest = parser.parse_known_args(argv)
  overrides = config_loader.parse_overrides(rest)
  print("| layers | scan compile s | unrolled compile s |")
  print("|---|---|---|")
  for num_layers in args.layers:
    seconds = [plan.plan(config_loader.load(args.config, {
        **overrides, "model.num_layers": num_layers,
        "model.scan_layers": scan}))["compile_seconds"]
               for scan in (True, False)]
    print(f"| {num_layers} | {seconds[0]:.2f} | {seconds[1]:.2f} |",
          flush=True)


if __name__ == "__main__":
  main()
