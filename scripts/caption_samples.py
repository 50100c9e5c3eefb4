"""Writes a PNG of a captioning run's test images with their captions.

  python scripts/caption_samples.py --workdir runs/caption_digits \\
      --out docs/curves/caption_digits_samples.png

The first `--count` images of the run's evaluation split, each titled with
its greedy caption (green when it names the image's class and no other, red
otherwise) and the reference caption below it.
"""
import argparse

import matplotlib
import numpy as np

from bigmodel_jax import evaluate, runs
from bigmodel_jax.evaluators import captions

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after the backend)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True)
  parser.add_argument("--count", type=int, default=12)
  parser.add_argument("--columns", type=int, default=4)
  args = parser.parse_args(argv)
  run = runs.load(args.workdir)
  run.require("caption")
  data = evaluate.run_input(run, 0, 1)
  batch = next(data.eval_batches())
  made = captions.generate(run.model, run.params, run.tokenizer, batch,
                           run.config.input.seq_len, run.parts["decode"])
  names = data.class_names or []
  rows = -(-args.count // args.columns)
  fig, axes = plt.subplots(rows, args.columns,
                           figsize=(2.6 * args.columns, 2.6 * rows))
  for i, ax in enumerate(np.ravel(axes)):
    ax.axis("off")
    if i >= args.count:
      continue
    image = batch["images"][i]
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
    label = int(batch["targets"][i])
    right = label >= 0 and names and captions.named(made[i], names) == {
        names[label]}
    ax.set_title(made[i], fontsize=8, color="green" if right else "red")
    ax.text(0.5, -0.08, captions.text(run.tokenizer, batch["texts"][i][1:]),
            fontsize=7, ha="center", va="top", transform=ax.transAxes)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
