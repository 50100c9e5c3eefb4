"""Anomaly detection: how well a run's per-example scores single out the
examples of classes it never trained on.

  config.input.train_without_classes = [9]      # the anomaly, unseen
  config.evals.anomaly = ml_collections.ConfigDict(dict(
      name="anomaly", split="test", anomalous_classes=[9], every_steps=0))

Every score the task gives (`example_scores`, capability "anomaly_scores":
a VAE's negative ELBO and reconstruction error, a classifier's max-softmax
baseline) is scored over the split's examples, those of
`anomalous_classes` positive: ROC-AUC, PR-AUC (average precision; chance
is the anomalies' share, reported as `anomaly_share`), and each side's
mean score -> anomaly/NAME_roc_auc, ... The JSON record holds the ROC
curve of each score (at most 200 points), for plots.
"""
import jax
import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from bigmodel_jax import capabilities
from bigmodel_jax.errors import ConfigError


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    capabilities.require(
        capabilities.parts(exp.family, exp.task, exp.config.model, None),
        "score_anomalies", f"task {exp.task.name!r}")
    self.exp, self.split = exp, block.get("split", "test")
    self.every_steps = block.get("every_steps", 0)
    self.anomalous = list(block.get("anomalous_classes") or ())
    if not self.anomalous:
      raise ConfigError("anomaly needs `anomalous_classes` (the labels of "
                        "the split's anomalies).")
    self.scores = jax.jit(lambda v, batch: exp.task.example_scores(
        exp.task.apply(exp.model, v, batch, train=False), batch))

  def split_scores(self, variables) -> tuple[dict, np.ndarray]:
    """({score name: (N,)}, labels (N,)) over the split (padding dropped)."""
    scores, labels = {}, []
    for batch in self.exp.data.eval_batches(self.split):
      keep = np.asarray(batch["weights"]) > 0
      for name, value in self.scores(variables, dict(batch)).items():
        scores.setdefault(name, []).append(np.asarray(value)[keep])
      labels.append(np.asarray(batch["targets"])[keep])
    return ({k: np.concatenate(v) for k, v in scores.items()},
            np.concatenate(labels))

  def __call__(self, variables) -> tuple[dict, dict]:
    scores, labels = self.split_scores(variables)
    truth = np.isin(labels, self.anomalous)
    if truth.all() or not truth.any():
      raise ConfigError(f"anomaly: split {self.split!r} needs both normal "
                        f"examples and anomalies (classes {self.anomalous}).")
    out, curves = {"anomaly_share": float(truth.mean())}, {}
    for name, score in scores.items():
      out[f"{name}_roc_auc"] = float(roc_auc_score(truth, score))
      out[f"{name}_pr_auc"] = float(average_precision_score(truth, score))
      out[f"{name}_normal"] = float(score[~truth].mean())
      out[f"{name}_anomalous"] = float(score[truth].mean())
      false, true, _ = roc_curve(truth, score)
      keep = np.unique(np.linspace(0, len(false) - 1, 200).astype(int))
      curves[name] = {"fpr": false[keep].round(5).tolist(),
                      "tpr": true[keep].round(5).tolist()}
    return out, {"roc": curves}
