"""A linear probe: logistic regression on a model's frozen image embeddings.

  config.evals.linear_probe = ml_collections.ConfigDict(dict(
      name="linear_probe", train="train", split="test", every_steps=0))
  # -> linear_probe/accuracy

Fits scikit-learn's multinomial logistic regression (L2, inverse strength
`C`, default 1) on the embeddings of the `train` split's images and scores
it on `split`: how linearly separable the representation keeps the classes
(CLIP's measure of a representation, comparable with a classifier trained
end to end on the same images).
"""
import numpy as np
from sklearn.linear_model import LogisticRegression

from bigmodel_jax.embeddings import Embedder


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    self.every_steps = block.get("every_steps", 0)
    self.train, self.split = block.get("train", "train"), block.get(
        "split", "test")
    self.strength = block.get("C", 1.0)
    self.embedder = Embedder(exp, "linear_probe")

  def __call__(self, variables) -> tuple[dict, dict]:
    fit = self.embedder.split(variables, self.train, ("images",))
    test = self.embedder.split(variables, self.split, ("images",))
    probe = LogisticRegression(C=self.strength, max_iter=2000)
    probe.fit(fit["images"], fit["targets"])
    accuracy = np.mean(probe.predict(test["images"]) == test["targets"])
    return {"accuracy": float(accuracy)}, {}
