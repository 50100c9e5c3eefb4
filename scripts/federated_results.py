"""Trains experiments/federated_digits.py's variants and tabulates and plots them.

  python scripts/federated_results.py --workdir runs/federated [--variants iid,alpha0.1]
  python scripts/federated_results.py --workdir runs/federated_rt \
      --experiment experiments/federated_rt.py --variants federated,private

Each variant is an ordinary run in WORKDIR/VARIANT (rerunning resumes or
skips it). Prints a table of the final test accuracy (the test split when
the input has one, else the eval split), epsilon and the
membership-inference AUC, and writes WORKDIR/federated_rounds.png
(federated runs: accuracy vs round) and WORKDIR/private_epsilon.png
(centralized runs: accuracy vs epsilon).
"""
import argparse
import os
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from bigmodel_jax import config_loader, metric_writer, train  # noqa: E402

DIGITS = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
             "federated_digits.py")
VARIANTS = ("iid", "alpha100", "alpha1", "alpha0.1", "fedprox", "fedadam",
            "user_dp", "dp_none", "dp_eps8", "dp_eps3", "dp_eps1")


def summary(workdir: str) -> dict:
  """Final figures of a run, and its accuracy per evaluated step."""
  records = metric_writer.read_jsonl(workdir)
  curve = {r["step"]: r["val/accuracy"] for r in records
           if "val/accuracy" in r}
  last = {}
  for r in records:
    last.update(r)
  config = config_loader.load_json(os.path.join(workdir, "config.json"))
  return {"curve": curve, "federated": bool(config.federated.clients),
          "accuracy": last.get("test/accuracy", last.get("val/accuracy")),
          "epsilon": last.get("privacy/epsilon", float("inf")),
          "auc": last.get("membership/auc"),
          "advantage": last.get("membership/advantage")}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--experiment", default=DIGITS)
  parser.add_argument("--variants", default=",".join(VARIANTS))
  args = parser.parse_args()
  results = {}
  for variant in args.variants.split(","):
    workdir = os.path.join(args.workdir, variant)
    train.train(config_loader.load(f"{args.experiment}:{variant}"), workdir)
    results[variant] = summary(workdir)
  print(f"\n{'variant':<10} {'test acc':>8} {'epsilon':>8} {'MIA AUC':>8} "
        f"{'MIA adv':>8}")
  for variant, r in results.items():
    print(f"{variant:<10} {r['accuracy']:8.4f} {r['epsilon']:8.3g} "
          f"{r['auc']:8.4f} {r['advantage']:8.4f}")
  fed = [v for v in results if results[v]["federated"]]
  if fed:
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in fed:
      curve = results[variant]["curve"]
      ax.plot(list(curve), list(curve.values()), label=variant)
    ax.set(xlabel="round", ylabel="accuracy (eval split)",
           title=f"Federated: {os.path.basename(args.experiment)}")
    ax.legend()
    fig.savefig(os.path.join(args.workdir, "federated_rounds.png"), dpi=120,
                bbox_inches="tight")
  private = [v for v in results if not results[v]["federated"]]
  if private:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    eps = [min(results[v]["epsilon"], 20) for v in private]
    ax.plot(eps, [results[v]["accuracy"] for v in private], "o-")
    for v, e in zip(private, eps):
      ax.annotate(v, (e, results[v]["accuracy"]))
    ax.set(xlabel="epsilon (delta 1e-5; no DP drawn at 20)",
           ylabel="test accuracy",
           title=f"DP-SGD: {os.path.basename(args.experiment)}")
    fig.savefig(os.path.join(args.workdir, "private_epsilon.png"), dpi=120,
                bbox_inches="tight")


if __name__ == "__main__":
  main()
