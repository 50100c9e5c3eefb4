"""Classification metrics: summed in the eval step, summarised on the host.

The eval step adds up a confusion matrix (rows: true class, columns:
predicted) and top-k hits over batches; `summarize` turns the totals into
accuracy, top-k accuracy and per-class / macro precision, recall and F1, and
`table` prints them. Shared by every classifier (images and text).
"""
import jax
import jax.numpy as jnp
import numpy as np


def classification_sums(logits, batch: dict, num_classes: int, k: int = 5
                        ) -> dict:
  """Weighted confusion matrix and top-k hits of one batch (jit-able)."""
  targets = batch["targets"]
  weights = batch.get("weights", jnp.ones(targets.shape, jnp.float32))
  true = jax.nn.one_hot(targets, num_classes) * weights[..., None]
  predicted = jax.nn.one_hot(jnp.argmax(logits, -1), num_classes)
  top_k = jax.lax.top_k(logits, min(k, num_classes))[1]
  hits = jnp.any(top_k == targets[..., None], -1).astype(jnp.float32)
  return {"confusion": jnp.einsum("...c,...d->cd", true, predicted),
          "top_k_correct": jnp.sum(hits * weights)}


def _ratio(a, b):
  return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def per_class(confusion) -> dict:
  """Precision, recall, F1 and support per class (arrays of num_classes)."""
  confusion = np.asarray(confusion, np.float64)
  hits = np.diag(confusion)
  precision = _ratio(hits, confusion.sum(0))
  recall = _ratio(hits, confusion.sum(1))
  return {"precision": precision, "recall": recall,
          "f1": _ratio(2 * precision * recall, precision + recall),
          "support": confusion.sum(1)}


def auxiliary(sums: dict) -> dict:
  """Mean loss and accuracy of each auxiliary head (steps.cross_entropy's
  "K/loss", "K/correct", "K/count"), e.g. {"nsp_loss", "nsp_accuracy"}."""
  out = {}
  for key in sums:
    if key.endswith("/count"):
      name = key[:-len("/count")]
      out[f"{name}_loss"] = sums[f"{name}/loss"] / sums[key]
      out[f"{name}_accuracy"] = sums[f"{name}/correct"] / sums[key]
  return out


def summarize(totals: dict, k: int = 5) -> dict:
  """Scalars from summed eval outputs: loss and accuracy (also of auxiliary
  heads), and for classifiers top-k accuracy, macro precision/recall/F1 and
  each class's F1."""
  count = float(totals["count"])
  out = {"loss": float(totals["loss"]) / count,
         "accuracy": float(totals["correct"]) / count}
  out.update({k: float(v) for k, v in auxiliary(totals).items()})
  if "confusion" in totals:
    num_classes = len(totals["confusion"])
    if num_classes > k:
      out[f"top{k}_accuracy"] = float(totals["top_k_correct"]) / count
    stats = per_class(totals["confusion"])
    for name in ("precision", "recall", "f1"):
      out[f"macro_{name}"] = float(stats[name].mean())
    out.update({f"f1/class_{i}": float(v) for i, v in enumerate(stats["f1"])})
  return out


def table(confusion, class_names=None) -> str:
  """Per-class precision/recall/F1/support and the confusion matrix as text."""
  confusion = np.asarray(confusion)
  stats = per_class(confusion)
  names = [str(n) for n in (class_names if class_names is not None
                            else range(len(confusion)))]
  width = max(8, *(len(n) for n in names))
  lines = [f"{'class':>{width}} precision  recall      f1  support"]
  for i, name in enumerate(names):
    lines.append(f"{name:>{width}} {stats['precision'][i]:9.4f} "
                 f"{stats['recall'][i]:7.4f} {stats['f1'][i]:7.4f} "
                 f"{stats['support'][i]:8.0f}")
  lines.append(f"{'macro':>{width}} {stats['precision'].mean():9.4f} "
               f"{stats['recall'].mean():7.4f} {stats['f1'].mean():7.4f} "
               f"{stats['support'].sum():8.0f}")
  lines.append("confusion matrix (rows: true, columns: predicted)")
  cell = max(5, len(str(int(confusion.max()))) + 1)
  lines.append(" " * width + "".join(f"{n[:cell - 1]:>{cell}}" for n in names))
  for name, row in zip(names, confusion):
    lines.append(f"{name:>{width}}" + "".join(f"{int(v):>{cell}}" for v in row))
  return "\n".join(lines)
