"""Writes a PNG grid of a GAN run's generated images beside real ones.

  python scripts/gan_samples.py --workdir runs/gan_digits --out samples.png

Top rows: images from fixed latents (seed `--seed`), for a class-conditional
run one column per class (labels 0, 1, ... across each row); bottom rows:
real test images of the run's input. Also prints how far the generated
images' pixel mean and standard deviation are from the real ones (mean
absolute gap).
"""
import argparse

import jax
import numpy as np

from bigmodel_jax import plots, registry, runs


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  run = runs.load(args.workdir)
  run.require("generate_images")
  z = jax.random.normal(jax.random.key(args.seed),
                        (512, run.parts["image_generation"]))
  columns = (run.config.model.num_classes if "class_conditional" in run.parts
             else 16)
  labels = np.arange(512) % columns
  fake = np.asarray(run.model.apply({"params": run.params}, z, labels,
                                    method="generate"))
  data = registry.get("data", run.config.input.name).Input(
      run.config.input, seed=0, process_index=0, process_count=1)
  real = np.concatenate([b["inputs"] for b in data.eval_batches()])
  print(f"step {run.step}: pixel mean gap "
        f"{np.abs(fake.mean(0) - real.mean(0)).mean():.3f}, pixel std gap "
        f"{np.abs(fake.std(0) - real.std(0)).mean():.3f}")
  plots.image_panels(
      [(plots.image_grid(fake[:args.num], columns, -1, 1),
        f"generated, step {run.step}"),
       (plots.image_grid(real[:args.num], columns, -1, 1),
        "real (eval split)")],
      args.out)


if __name__ == "__main__":
  main()
