"""Per-class metrics from a confusion matrix (rows: true class, columns:
predicted): precision, recall, F1 and support, and a printable table.
The classification task sums the matrix in its eval step.
"""
import numpy as np


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
