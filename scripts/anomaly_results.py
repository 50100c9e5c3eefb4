"""Anomaly detection on the digits, each digit held out in turn: the
autoencoders' scores against a classifier's max-softmax baseline.

  python scripts/anomaly_results.py --workdir runs/anomaly \\
      [--variants cpu,conv,ae,classifier] [--digits 0,1,...,9]

Trains `vae_digits.py:VARIANT:DIGIT` for each variant and held-out digit
(an ordinary run in WORKDIR/VARIANT_DIGIT; a finished one is not
retrained), then prints the mean ROC-AUC and PR-AUC of each score over the
digits and a per-digit ROC-AUC table, and writes WORKDIR/anomaly_digits.png
(ROC-AUC per held-out digit, and the ROC curves of the last digit).
"""
import argparse
import os
import pathlib
import subprocess
import sys

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bigmodel_jax import metric_writer  # noqa: E402


def trained(workdir: str, variant: str, digit: int, seed: int) -> list:
  """The run's metric records, training it first unless finished."""
  if not os.path.exists(os.path.join(workdir, "done")):
    subprocess.run([sys.executable, "-m", "bigmodel_jax.train", "--config",
                    f"{ROOT / 'experiments' / 'vae_digits.py'}:{variant}:"
                    f"{digit}", "--workdir", workdir, f"--config.seed={seed}"],
                   check=True, cwd=ROOT)
    pathlib.Path(workdir, "done").touch()
  return metric_writer.read_jsonl(workdir)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--variants", default="cpu,conv,ae,classifier")
  parser.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  digits = [int(d) for d in args.digits.split(",")]
  results, curves = {}, {}  # (variant, score) -> digit -> (roc, pr)
  for variant in args.variants.split(","):
    for digit in digits:
      records = trained(os.path.join(args.workdir, f"{variant}_{digit}"),
                        variant, digit, args.seed)
      scalars = next(r for r in reversed(records)
                     if "anomaly/anomaly_share" in r)
      for key in scalars:
        if key.endswith("_roc_auc"):
          score = key[len("anomaly/"):-len("_roc_auc")]
          results.setdefault((variant, score), {})[digit] = (
              scalars[key], scalars[f"anomaly/{score}_pr_auc"])
      roc = next(r for r in reversed(records) if "anomaly/roc" in r)
      for score, curve in roc["anomaly/roc"].items():
        curves[(variant, score)] = curve

  print("| run | score | mean ROC-AUC | mean PR-AUC |")
  print("|---|---|---|---|")
  for (variant, score), by_digit in results.items():
    roc, pr = np.mean(list(by_digit.values()), 0)
    print(f"| vae_digits.py:{variant} | {score} | {roc:.3f} | {pr:.3f} |")
  print("\n| run | score | " + " | ".join(map(str, digits)) + " |")
  print("|---|---|" + "---|" * len(digits))
  for (variant, score), by_digit in results.items():
    print(f"| {variant} | {score} | " + " | ".join(
        f"{by_digit[d][0]:.3f}" for d in digits) + " |")

  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
  for (variant, score), by_digit in results.items():
    label = f"{variant}: {score}"
    left.plot(digits, [by_digit[d][0] for d in digits], marker="o",
              label=label)
    right.plot(curves[(variant, score)]["fpr"],
               curves[(variant, score)]["tpr"], label=label)
  left.set_xticks(digits)
  left.set_xlabel("held-out digit (the anomaly)")
  left.set_ylabel("ROC-AUC")
  left.grid(alpha=0.3)
  right.plot([0, 1], [0, 1], color="grey", linestyle=":")
  right.set_xlabel("false positive rate")
  right.set_ylabel("true positive rate")
  right.set_title(f"ROC, digit {digits[-1]} held out", fontsize=9)
  right.legend(fontsize=7)
  fig.tight_layout()
  path = os.path.join(args.workdir, "anomaly_digits.png")
  fig.savefig(path, dpi=110)
  print(f"wrote {path}")


if __name__ == "__main__":
  main()
