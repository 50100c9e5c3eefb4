"""Writes a PNG of an autoencoder run: reconstructions, samples and a
latent traversal.

  python scripts/autoencoder_grids.py --workdir runs/vae_digits --out vae.png

Panels: test images over their reconstructions (the decoded posterior
mean); images decoded from latents drawn from the prior N(0, I) (a plain
autoencoder has no prior: a Gaussian fitted to the test codes); and one
test image's code moved along each latent dimension from -3 to +3 standard
deviations of the test codes, a row per dimension.
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
  parser.add_argument("--num", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  run = runs.load(args.workdir)
  variables = {"params": run.params}
  data = registry.get("data", run.config.input.name).Input(
      run.config.input, seed=0, process_index=0, process_count=1)
  real = np.concatenate([b["inputs"] for b in data.eval_batches()])
  codes = np.asarray(run.model.apply(variables, real, method="encode")[0])
  decode = jax.jit(lambda z: run.model.apply(variables, z, method="generate"))
  reconstructed = np.asarray(decode(codes[:args.num]))
  variational = run.config.model.variational
  size = codes.shape[1]
  center, spread = ((np.zeros(size), np.ones(size)) if variational else
                    (codes.mean(0), codes.std(0)))
  z = center + spread * np.random.default_rng(args.seed).normal(
      size=(2 * args.num, size))
  samples = np.asarray(decode(z.astype(np.float32)))
  traversal = []
  for d in range(size):
    moved = np.repeat(codes[:1], args.num, 0)
    moved[:, d] = center[d] + np.linspace(-3, 3, args.num) * spread[d]
    traversal.append(np.asarray(decode(moved)))
  print(f"step {run.step}: reconstruction mse "
        f"{np.mean((reconstructed - real[:args.num]) ** 2):.4f} per pixel")

  grid = lambda rows: plots.image_grid(np.concatenate(rows), args.num)  # noqa: E731
  plots.image_panels(
      [(grid([real[:args.num], reconstructed]),
        "test images / reconstructions"),
       (grid([samples]), "samples from the prior" if variational else
        "samples from a Gaussian fitted to the codes"),
       (grid(traversal), "latent traversal: a row per dimension, -3 to +3")],
      args.out, title=f"{run.config.model.name} {run.config.model.kind}, "
      f"step {run.step}")


if __name__ == "__main__":
  main()
