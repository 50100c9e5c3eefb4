"""Classification metrics against hand-computed values."""
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import metrics
from bigmodel_jax.tasks import classification

TASK = classification.Task(config=None)


def test_sums_in_the_step_respect_weights_and_top_k():
  logits = jnp.array([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0],
                      [3.0, 1.0, 2.0]])
  batch = {"targets": jnp.array([0, 2, 2, 1]),
           "weights": jnp.array([1.0, 1.0, 1.0, 0.0])}  # Last one: padding.
  sums = TASK.eval_sums(logits, batch)
  np.testing.assert_array_equal(sums["confusion"],
                                [[1, 0, 0], [0, 0, 0], [0, 1, 1]])
  assert float(sums["top_k_correct"]) == 3.0  # Top 5 of 3 classes: all.
  assert float(sums["count"]) == 3.0 and float(sums["correct"]) == 2.0


def test_summary_and_table_from_a_confusion_matrix():
  # Rows true, columns predicted: class 0 has 2 right, 1 taken for class 1.
  confusion = np.array([[2, 1], [0, 3]])
  totals = {"loss": 3.0, "correct": 5.0, "count": 6.0,
            "confusion": confusion, "top_k_correct": 6.0}
  out = TASK.summarize(totals)
  precision = np.array([1.0, 0.75])
  recall = np.array([2 / 3, 1.0])
  f1 = 2 * precision * recall / (precision + recall)
  assert out["accuracy"] == pytest.approx(5 / 6)
  assert out["loss"] == pytest.approx(0.5)
  assert out["macro_precision"] == pytest.approx(precision.mean())
  assert out["macro_recall"] == pytest.approx(recall.mean())
  assert out["macro_f1"] == pytest.approx(f1.mean())
  assert out["f1/class_0"] == pytest.approx(0.8)
  assert "top5_accuracy" not in out  # Only with more than 5 classes.
  text = metrics.table(confusion, ["neg", "pos"])
  assert "     neg    1.0000  0.6667  0.8000        3" in text
  assert text.splitlines()[-1].split() == ["pos", "0", "3"]


def test_a_class_never_predicted_has_zero_precision_not_nan():
  stats = metrics.per_class(np.array([[2, 0], [1, 0]]))
  np.testing.assert_array_equal(stats["precision"], [2 / 3, 0.0])
  np.testing.assert_array_equal(stats["f1"][1], 0.0)
