"""Zero-shot classification by a two-tower model: an image's class is the
class whose prompts it is nearest to.

  config.evals.zero_shot = ml_collections.ConfigDict(dict(
      name="zero_shot", split="test", every_steps=0,
      templates=["a drawing of the number {}.", ...]))  # -> zero_shot/accuracy

Each class's text embedding is the normalised mean of its prompts (every
template filled with the class name: `class_names`, default the input's);
reported: top-1 accuracy and the mean per-class accuracy. Needs an input
that labels its eval images ("targets") and encodes texts (`encode`:
image_captions).
"""
import numpy as np

from bigmodel_jax.embeddings import Embedder
from bigmodel_jax.errors import ConfigError


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    self.every_steps = block.get("every_steps", 0)
    self.split = block.get("split", "test")
    templates = list(block.get("templates") or ())
    names = list(block.get("class_names") or exp.data.class_names or ())
    if not templates or not names:
      raise ConfigError("zero_shot needs `templates` (strings with {} for the "
                        "class name) and class names (`class_names`, or an "
                        "input that has them).")
    encode = getattr(exp.data, "encode", None)
    if encode is None:
      raise ConfigError(f"zero_shot needs an input that encodes texts; "
                        f"{exp.config.input.name!r} does not.")
    self.shape = (len(names), len(templates))
    self.prompts = encode([t.format(n) for n in names for t in templates])
    self.embedder = Embedder(exp, "zero_shot")

  def __call__(self, variables) -> tuple[dict, dict]:
    prompts = self.embedder(variables, self.prompts).reshape(
        *self.shape, -1).mean(1)
    classes = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
    found = self.embedder.split(variables, self.split, ("images",))
    predicted = np.argmax(found["images"] @ classes.T, -1)
    right = predicted == found["targets"]
    per_class = [right[found["targets"] == c].mean()
                 for c in range(self.shape[0]) if np.any(
                     found["targets"] == c)]
    return {"accuracy": float(right.mean()),
            "mean_class_accuracy": float(np.mean(per_class))}, {}
