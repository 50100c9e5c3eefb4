"""Finds likely mislabelled examples of a classification dataset, and runs
one round of relabelling through Label Studio.

  python -m bigmodel_jax.audit_labels --config experiments/vit_digits.py \\
      --workdir runs/audit --folds 5 [--config.KEY=VALUE ...]
  python -m bigmodel_jax.audit_labels import --export annotated.json \\
      --out fixed.json [--base previous_overrides.json]
  python -m bigmodel_jax.train --config ... \\
      --config.input.label_overrides=fixed.json

The audit trains the k cross-validation runs of the config
(`sweep --folds`: the same runner, resumable, `--parallel`), predicts each
fold's held-out examples with the run that did not see them, and ranks the
examples whose given label the out-of-fold probabilities contradict by
confident learning (cleanlab's `find_label_issues`, ranked by
self-confidence). It writes into the workdir
  label_issues.csv      rank, id, given and predicted label, p(given),
                        p(predicted) of every suspected example
  out_of_fold.npz       ids, given labels, probabilities of every example
  audit.json            counts, out-of-fold accuracy (and, with
                        --flipped, the precision and recall of finding them)
  label_studio/tasks.json, label_studio/config.xml
                        the suspects and the --least_certain examples (the
                        smallest margin between the two likeliest classes)
                        as Label Studio tasks, the model's label pre-selected
and prints the top of the list. `import` reads Label Studio's JSON export
back into a label-override file (`dataio/label_overrides.py`) that every
classification input applies.
"""
import argparse
import csv
import json
import os
import sys

import jax
import numpy as np

from bigmodel_jax import config_loader, evaluate, runs, steps, sweep
from bigmodel_jax.dataio import label_studio
from bigmodel_jax.errors import ConfigError, NotFound, UserError, entrypoint


def _predict_fn(run):
  def predict(variables, batch):
    return jax.nn.softmax(run.task.apply(run.model, variables, batch,
                                         train=False), -1)
  return steps.jit_eval_step(predict, run.variables, run.layout)


def predictions(run_dir: str, wanted: set | None = None):
  """(ids, given labels, probabilities, contents) of the held-out examples
  of one cross-validation run; contents (text, or a PNG data: URI) only for
  the ids in `wanted`."""
  run = runs.load(run_dir)
  run.require("classify")
  data = evaluate.run_input(run)
  predict = _predict_fn(run)
  ids = iter(data.example_ids())
  out = {"ids": [], "labels": [], "probs": [], "contents": {}}
  for batch in data.eval_batches():
    real = np.asarray(batch["weights"]) > 0
    probs = np.asarray(predict(run.variables, run.layout.global_batch(batch)))
    for row in np.flatnonzero(real):
      example = next(ids)
      out["ids"].append(example)
      out["labels"].append(int(batch["targets"][row]))
      out["probs"].append(probs[row])
      if wanted and example in wanted:
        inputs = np.asarray(batch["inputs"][row])
        out["contents"][example] = (
            run.tokenizer.decode(inputs) if run.tokenizer is not None
            else label_studio.png_uri(inputs))
  return out, data.class_names, run.tokenizer is not None


def find_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
  """Indices of likely mislabelled examples, most likely first."""
  from cleanlab.filter import find_label_issues  # Only audits need it.
  return find_label_issues(labels, probs, n_jobs=1,
                           return_indices_ranked_by="self_confidence")


def least_certain(probs: np.ndarray, count: int, skip) -> np.ndarray:
  """The `count` examples with the smallest top-two margin, not in `skip`."""
  top = np.sort(probs, -1)
  order = np.argsort(top[:, -1] - top[:, -2], kind="stable")
  return np.array([i for i in order if i not in set(skip)][:count], int)


def audit(args, common: dict) -> dict:
  points = sweep.fold_points(args.config, common, args.folds)
  names = [sweep.point_name(i, p) for i, p in enumerate(points)]
  status = sweep.run(args.config, args.workdir, points, common,
                     args.parallel)
  failed = {n: s for n, s in status.items() if s != "done"}
  if failed:
    raise UserError(f"Cross-validation runs did not finish: {failed}; "
                    "rerun the same command to resume them.")
  folds = [predictions(os.path.join(args.workdir, n))[0] for n in names]
  ids = sum((f["ids"] for f in folds), [])
  labels = np.array(sum((f["labels"] for f in folds), []), np.int32)
  probs = np.stack([p for f in folds for p in f["probs"]])
  issues = find_issues(labels, probs)
  unsure = least_certain(probs, args.least_certain, issues)
  wanted = {ids[i] for i in np.concatenate([issues, unsure])}
  contents, class_names = {}, None
  for name in names:
    found, class_names, is_text = predictions(
        os.path.join(args.workdir, name), wanted)
    contents.update(found["contents"])
  np.savez(os.path.join(args.workdir, "out_of_fold.npz"), ids=np.array(ids),
           labels=labels, probs=probs)
  rows = [{"rank": r + 1, "id": ids[i], "given": class_names[labels[i]],
           "predicted": class_names[int(probs[i].argmax())],
           "p_given": float(probs[i, labels[i]]),
           "p_predicted": float(probs[i].max())}
          for r, i in enumerate(issues)]
  with open(os.path.join(args.workdir, "label_issues.csv"), "w",
            newline="") as f:
    writer = csv.DictWriter(f, ["rank", "id", "given", "predicted",
                                "p_given", "p_predicted"])
    writer.writeheader()
    writer.writerows(rows)
  kind = "text" if is_text else "image"
  examples = [{"id": ids[i], "content": contents[ids[i]],
               "given": class_names[labels[i]],
               "predicted": class_names[int(probs[i].argmax())],
               "score": float(probs[i].max()), "reason": reason}
              for reason, chosen in (("suspected", issues),
                                     ("least certain", unsure))
              for i in chosen]
  folder = os.path.join(args.workdir, "label_studio")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "tasks.json"), "w") as f:
    json.dump(label_studio.tasks(examples, kind), f, indent=1)
  with open(os.path.join(folder, "config.xml"), "w") as f:
    f.write(label_studio.labeling_config(class_names, kind))
  summary = {"examples": len(ids), "suspected": len(issues),
             "least_certain": len(unsure),
             "out_of_fold_accuracy": float(np.mean(probs.argmax(-1) ==
                                                   labels))}
  if args.flipped:
    summary.update(recovery({ids[i] for i in issues}, set(ids),
                            args.flipped))
  with open(os.path.join(args.workdir, "audit.json"), "w") as f:
    json.dump(summary, f, indent=1)
  _print(rows[:args.top], summary)
  return summary


def recovery(found: set, audited: set, flipped_file: str) -> dict:
  """Precision and recall of `found` against the ids a label-override file
  flipped on purpose (those among the audited examples)."""
  try:
    with open(flipped_file) as f:
      flipped = {str(k) for k in json.load(f)} & audited
  except (OSError, ValueError) as e:
    raise NotFound(f"--flipped {flipped_file}: {e}") from None
  hits = len(found & flipped)
  return {"flipped": len(flipped), "found_flipped": hits,
          "precision": hits / len(found) if found else 0.0,
          "recall": hits / len(flipped) if flipped else 0.0}


def _print(rows: list[dict], summary: dict) -> None:
  print(f"{summary['suspected']} of {summary['examples']} examples suspected "
        f"(out-of-fold accuracy {summary['out_of_fold_accuracy']:.4f})" +
        (f"; of the {summary['flipped']} flipped labels "
         f"{summary['found_flipped']} found (precision "
         f"{summary['precision']:.3f}, recall {summary['recall']:.3f})"
         if "flipped" in summary else ""))
  if rows:
    print("| rank | id | given | predicted | p(given) | p(predicted) |\n"
          "|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['rank']} | {r['id']} | {r['given']} | {r['predicted']} | "
          f"{r['p_given']:.3f} | {r['p_predicted']:.3f} |")


def import_export(argv) -> None:
  parser = argparse.ArgumentParser(
      prog="audit_labels import",
      description="Label Studio's JSON export -> a label-override file.")
  parser.add_argument("--export", required=True)
  parser.add_argument("--out", required=True, help="the override file")
  parser.add_argument("--base", help="earlier overrides the new ones update")
  args = parser.parse_args(argv)
  try:
    with open(args.export, encoding="utf-8") as f:
      exported = json.load(f)
    base = {}
    if args.base:
      with open(args.base, encoding="utf-8") as f:
        base = json.load(f)
  except (OSError, ValueError) as e:
    raise NotFound(f"Cannot read the export or --base: {e}") from None
  fixed = label_studio.corrections(exported)
  if os.path.exists(args.out):
    raise ConfigError(f"--out {args.out} exists; choose a new file.")
  with open(args.out, "w") as f:
    json.dump({**base, **fixed}, f, indent=1, sort_keys=True)
  print(f"{len(fixed)} labels from {args.export} "
        f"({len(base)} earlier overrides) -> {args.out}")


@entrypoint
def main(argv=None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ["import"]:
    return import_export(argv[1:])
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--folds", type=int, default=5)
  parser.add_argument("--parallel", type=int, default=1,
                      help="cross-validation runs at a time")
  parser.add_argument("--top", type=int, default=20, help="rows printed")
  parser.add_argument("--least_certain", type=int, default=20,
                      help="also sent to Label Studio")
  parser.add_argument("--flipped", help="a label-override file that flipped "
                      "labels on purpose: report how many are found")
  args, rest = parser.parse_known_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  audit(args, config_loader.parse_overrides(rest))


if __name__ == "__main__":
  main()
