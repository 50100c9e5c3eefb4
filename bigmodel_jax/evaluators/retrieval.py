"""Image->text and text->image retrieval among a split's pairs.

  config.evals.retrieval = ml_collections.ConfigDict(dict(
      name="retrieval", split="test", every_steps=0))
  # -> retrieval/image_to_text@1, @5, @10, text_to_image@1, ...

Every image's own caption (the eval caption, "texts") is the one to find
among all the split's captions, and the reverse; recall@k is the share
found in the top k. Ties count as found: a caption identical to the
image's own (templated captions repeat) scores the same and is not ranked
above it. When the split is labelled ("targets" >= 0), class recall@k
(`..._class@k`) counts an item found when one of the top k has its class:
with templated captions, many images fit one caption equally, and this is
the figure that says whether the right kind of item comes back.
"""
import numpy as np

from bigmodel_jax.embeddings import Embedder

RANKS = (1, 5, 10)


def recalls(similarity: np.ndarray, ranks=RANKS) -> dict:
  """{k: share of rows whose diagonal entry has fewer than k entries of the
  row strictly above it}."""
  above = (similarity > np.diag(similarity)[:, None]).sum(1)
  return {k: float(np.mean(above < k)) for k in ranks}


def class_recalls(similarity: np.ndarray, labels: np.ndarray,
                  ranks=RANKS) -> dict:
  """{k: share of rows with an item of their label among their top k}."""
  order = np.argsort(-similarity, axis=1, kind="stable")
  same = labels[order] == labels[:, None]
  return {k: float(np.mean(same[:, :k].any(1))) for k in ranks}


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    self.every_steps = block.get("every_steps", 0)
    self.split = block.get("split", "test")
    self.embedder = Embedder(exp, "retrieval")

  def __call__(self, variables) -> tuple[dict, dict]:
    found = self.embedder.split(variables, self.split, ("images", "texts"))
    similarity = found["images"] @ found["texts"].T
    out = {}
    for name, sims in (("image_to_text", similarity),
                       ("text_to_image", similarity.T)):
      out.update({f"{name}@{k}": v for k, v in recalls(sims).items()})
      if np.all(found["targets"] >= 0):
        out.update({f"{name}_class@{k}": v for k, v in class_recalls(
            sims, found["targets"]).items()})
    return out, {}
