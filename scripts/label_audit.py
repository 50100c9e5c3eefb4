"""One round of the labelling loop on labels flipped on purpose: how many
flips `audit_labels` finds, and what correcting them is worth.

  python scripts/label_audit.py --config experiments/vit_digits.py \\
      --workdir runs/label_audit --flip 0.05 [--config.KEY=VALUE ...]

1. Flips a fraction of the training labels (fixed seed) to another class:
   a label-override file, as an annotation mistake would be.
2. Trains on the flipped labels (the baseline) and scores the test split.
3. Audits with k-fold cross-validation (`audit_labels --flipped`), so the
   suspects' precision and recall against the flips are known.
4. Plays the annotator of the exported Label Studio tasks (answers with the
   original label), reads the export back (`audit_labels import`) and
   trains again on the corrected labels.
Prints a markdown table (docs/trust.md).
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
from bigmodel_jax import (audit_labels, config_loader, evaluate,  # noqa: E402
                          registry, runs, train)


def original_labels(config) -> dict:
  """{id: class name} of the training split, as the data has them."""
  data = registry.get("data", config.input.name).Input(
      config.input, seed=0, process_index=0, process_count=1)
  split = config.input.get("train_split", "train")
  ids = iter(data.example_ids(split))
  out = {}
  for batch in data.eval_batches(split):
    for row in np.flatnonzero(batch["weights"] > 0):
      out[next(ids)] = data.class_names[int(batch["targets"][row])]
  return out, data.class_names


def flipped(labels: dict, class_names: list, fraction: float, seed: int
            ) -> dict:
  rng = np.random.default_rng(seed)
  chosen = rng.choice(sorted(labels), round(len(labels) * fraction),
                      replace=False)
  return {i: rng.choice([c for c in class_names if c != labels[i]])
          for i in sorted(chosen)}


def test_accuracy(spec: str, common: dict, overrides_file: str,
                  workdir: str) -> float:
  if not os.path.exists(os.path.join(workdir, "done")):
    train.train(config_loader.load(spec, {
        **common, "input.label_overrides": overrides_file}), workdir)
    open(os.path.join(workdir, "done"), "w").close()
  run = runs.load(workdir)
  total, batches = evaluate.split_batches(run, "test")
  return evaluate.evaluate(run, total, batches)["accuracy"]


def annotate(tasks_file: str, truth: dict, out: str) -> None:
  """A Label Studio export of `tasks_file` where every answer is `truth`
  (the given label for examples outside it, which were not flipped)."""
  with open(tasks_file) as f:
    tasks = json.load(f)
  for number, task in enumerate(tasks):
    task["id"] = number + 1
    task["annotations"] = [{"was_cancelled": False, "result": [{
        "from_name": "label", "to_name": next(k for k in task["data"]
                                              if k != "example_id"),
        "type": "choices",
        "value": {"choices": [truth.get(task["data"]["example_id"],
                                        task["meta"]["given_label"])]}}]}]
  with open(out, "w") as f:
    json.dump(tasks, f)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--flip", type=float, default=0.05)
  parser.add_argument("--folds", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  args, rest = parser.parse_known_args(argv)
  common = config_loader.parse_overrides(rest)
  os.makedirs(args.workdir, exist_ok=True)
  truth, class_names = original_labels(config_loader.load(args.config,
                                                          common))
  noisy = os.path.join(args.workdir, "flipped.json")
  flips = flipped(truth, class_names, args.flip, args.seed)
  with open(noisy, "w") as f:
    json.dump(flips, f, indent=1)
  baseline = test_accuracy(args.config, common, noisy,
                           os.path.join(args.workdir, "baseline"))
  audit_dir = os.path.join(args.workdir, "audit")
  audit_labels.main(["--config", args.config, "--workdir", audit_dir,
                     "--folds", str(args.folds), "--flipped", noisy,
                     f"--config.input.label_overrides={noisy}", *rest])
  with open(os.path.join(audit_dir, "audit.json")) as f:
    audit = json.load(f)
  export = os.path.join(args.workdir, "annotated.json")
  annotate(os.path.join(audit_dir, "label_studio", "tasks.json"), truth,
           export)
  fixed = os.path.join(args.workdir, "fixed.json")
  if os.path.exists(fixed):
    os.remove(fixed)
  audit_labels.main(["import", "--export", export, "--out", fixed, "--base",
                     noisy])
  with open(fixed) as f:
    left = sum(label != truth.get(i, label)
               for i, label in json.load(f).items())
  corrected = test_accuracy(args.config, common, fixed,
                            os.path.join(args.workdir, "corrected"))
  print(f"\n{args.config}, {len(flips)} of {len(truth)} training labels "
        f"flipped, {args.folds} folds: {audit['suspected']} suspected, "
        f"{audit['found_flipped']} of them flipped (precision "
        f"{audit['precision']:.3f}, recall {audit['recall']:.3f})\n")
  print("| training labels | wrong labels | test accuracy |\n|---|---|---|")
  print(f"| flipped | {len(flips)} | {baseline:.4f} |")
  print(f"| after one audit round | {left} | {corrected:.4f} |")


if __name__ == "__main__":
  main()
