"""Metric-vs-step plots of one or more runs, and grids of images (PNG,
matplotlib, headless).

  python -m bigmodel_jax.plots --workdir runs/a --workdir runs/b \\
      --metric train/loss --metric val/loss --out curves.png
"""
import argparse
import os

import numpy as np

from bigmodel_jax import metric_writer


def series(records: list[dict], metric: str) -> tuple[list, list]:
  """(steps, values) of `metric` in metrics.jsonl records."""
  points = [(r["step"], r[metric]) for r in records
            if isinstance(r.get(metric), (int, float))]
  return [s for s, _ in points], [v for _, v in points]


def plot(runs: dict[str, list[dict]], metrics, path: str,
         title: str | None = None, xlabel: str = "step") -> None:
  """One line per run (name -> records) and metric, against each record's
  "step" (labelled `xlabel`)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  metrics = [metrics] if isinstance(metrics, str) else list(metrics)
  fig, ax = plt.subplots(figsize=(7, 4.2))
  for name, records in runs.items():
    for metric in metrics:
      steps, values = series(records, metric)
      label = " ".join(([name] if len(runs) > 1 else []) +
                       ([metric] if len(metrics) > 1 else []))
      if steps:
        ax.plot(steps, values, label=label or None,
                marker="." if len(steps) < 30 else "")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(", ".join(metrics))
  ax.set_title(title or ", ".join(metrics))
  ax.grid(alpha=0.3)
  if len(runs) > 1 or len(metrics) > 1:
    ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def image_grid(images, columns: int, low: float = 0.0, high: float = 1.0):
  """(N, H, W, 1) images valued in [low, high] -> one grey image in [0, 1],
  `columns` wide, 1-pixel white gaps."""
  n, h, w = images.shape[:3]
  out = np.ones((-(-n // columns) * (h + 1), columns * (w + 1)))
  for i, image in enumerate(np.asarray(images)):
    r, c = divmod(i, columns)
    out[r * (h + 1):r * (h + 1) + h, c * (w + 1):c * (w + 1) + w] = (
        image[..., 0] - low) / (high - low)
  return out


def image_panels(panels: list, path: str, width: float = 8.0,
                 title: str | None = None) -> None:
  """(grid, title) pairs of grey image grids (`image_grid`) stacked as
  titled panels, `width` inches wide."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  heights = [grid.shape[0] for grid, _ in panels]
  inches = width * sum(heights) / max(g.shape[1] for g, _ in panels)
  fig, axes = plt.subplots(len(panels), 1, squeeze=False,
                           figsize=(width, inches + 0.4 * len(panels)),
                           gridspec_kw={"height_ratios": heights})
  for ax, (grid, panel_title) in zip(axes[:, 0], panels):
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1)
    ax.set_title(panel_title, fontsize=9)
    ax.axis("off")
  if title:
    fig.suptitle(title, fontsize=10)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  print(f"wrote {path}")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", action="append", required=True)
  parser.add_argument("--metric", action="append", required=True)
  parser.add_argument("--out", required=True, help="PNG path")
  parser.add_argument("--title")
  args = parser.parse_args(argv)
  runs = {os.path.basename(os.path.normpath(w)): metric_writer.read_jsonl(w)
          for w in args.workdir}
  plot(runs, args.metric, args.out, args.title)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
