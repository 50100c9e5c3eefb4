"""A loss-threshold membership-inference attack (Yeom et al. 2018) on a classifier.

  config.evals.membership = ml_collections.ConfigDict(dict(
      name="membership", members="train", outsiders="test", every_steps=0))

The attacker guesses "was in the training data" when an example's loss is
low. Reported: the attack's ROC-AUC over the members' and the outsiders'
per-example cross-entropies (0.5: no better than chance; what
differential privacy bounds), its best accuracy on a balanced sample, and
the mean loss of each side. Members are scored as evaluation sees them
(no augmentation). For tasks whose outputs are per-example class logits.
"""
import jax
import jax.numpy as jnp
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from bigmodel_jax.errors import ConfigError


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    self.exp = exp
    self.members = block.get("members", "train")
    self.outsiders = block.get("outsiders", "test")
    self.every_steps = block.get("every_steps", 0)
    self.losses = jax.jit(self._losses)

  def _losses(self, variables, batch):
    logits = self.exp.task.apply(self.exp.model, variables, batch,
                                 train=False)
    if logits.ndim != 2 or batch["targets"].ndim != 1:
      raise ConfigError("The membership evaluator needs per-example class "
                        f"logits; task {self.exp.task.name!r} gives shape "
                        f"{logits.shape}.")
    log_p = jax.nn.log_softmax(logits.astype("float32"))
    return -jnp.take_along_axis(log_p, batch["targets"][:, None], 1)[:, 0]

  def split_losses(self, variables, split: str) -> np.ndarray:
    """Per-example losses of a split (padding rows dropped)."""
    out = []
    for batch in self.exp.data.eval_batches(split):
      losses = np.asarray(self.losses(variables, dict(batch)))
      weights = np.asarray(batch.get("weights", np.ones(len(losses))))
      out.append(losses[weights > 0])
    return np.concatenate(out)

  def __call__(self, variables) -> tuple[dict, dict]:
    inside = self.split_losses(variables, self.members)
    outside = self.split_losses(variables, self.outsiders)
    truth = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
    scores = -np.r_[inside, outside]
    auc = roc_auc_score(truth, scores)
    false, true, _ = roc_curve(truth, scores)  # Advantage: max TPR - FPR
    return {"auc": float(auc), "advantage": float(np.max(true - false)),
            "member_loss": float(inside.mean()),
            "outsider_loss": float(outside.mean())}, {}
