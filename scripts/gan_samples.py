"""Writes a PNG grid of a GAN run's generated images beside real ones.

  python scripts/gan_samples.py --workdir runs/gan_digits --out samples.png

Top rows: images from fixed latents (seed `--seed`); bottom rows: real test
images of the run's input. Also prints how far the generated images' pixel
mean and standard deviation are from the real ones (mean absolute gap).
"""
import argparse

import jax
import matplotlib
import numpy as np

from bigmodel_jax import registry, runs

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after the backend)


def grid(images: np.ndarray, columns: int) -> np.ndarray:
  """(N, H, W, 1) in [-1, 1] -> one (rows * H, columns * W) image."""
  n, h, w = images.shape[:3]
  rows = -(-n // columns)
  out = np.ones((rows * (h + 1), columns * (w + 1)))
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = (
        image[..., 0] + 1) / 2
  return out


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--num", type=int, default=32)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  run = runs.load(args.workdir)
  z = jax.random.normal(jax.random.key(args.seed),
                        (512, run.config.model.latent_dim))
  fake = np.asarray(run.model.apply({"params": run.params}, z,
                                    method="generate"))
  data = registry.get("data", run.config.input.name).Input(
      run.config.input, seed=0, process_index=0, process_count=1)
  real = np.concatenate([b["inputs"] for b in data.eval_batches()])
  print(f"step {run.step}: pixel mean gap "
        f"{np.abs(fake.mean(0) - real.mean(0)).mean():.3f}, pixel std gap "
        f"{np.abs(fake.std(0) - real.std(0)).mean():.3f}")
  figure, axes = plt.subplots(2, 1, figsize=(8, 2.6))
  for ax, images, title in ((axes[0], fake, f"generated, step {run.step}"),
                            (axes[1], real, "real (eval split)")):
    ax.imshow(grid(images[:args.num], 16), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
  figure.savefig(args.out, dpi=120, bbox_inches="tight")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
