"""The quality of generated images, measured by a trained classifier.

  config.evals.generated = ml_collections.ConfigDict(dict(
      name="generated_images", classifier="runs/resnet_digits",
      split="test", num_samples=1000, every_steps=500))

A run that generates images from latents (capability "generate_images":
a GAN, a VAE) draws `num_samples` latents from N(0, I), with labels cycling
through the classes, and a trained classifier run of the same images
(capabilities "image_features" and "classify": `resnet`, `vit`) scores
them; pixels go from the run's preprocessing to the classifier's through
what each makes of black and white. Reported (generated/NAME):

  fid          Fréchet distance (Heusel et al. 2017) between the
               classifier's pooled features of the samples and of `split`'s
               real images: FID with the trained classifier in place of
               Inception
  fid_floor    the same distance between the train split's and `split`'s
               real images (computed once): what a perfect generator scores
               at these sample sizes
  coverage     the share of classes that get at least half their fair share
               (1 / 2K) of the samples' predicted classes
  class_entropy  entropy of the predicted classes' histogram / log K
  confidence   the classifier's mean top probability on the samples
  label_accuracy  class-conditional runs: samples classified as their label
"""
import jax
import numpy as np
import scipy.linalg

from bigmodel_jax import capabilities, runs
from bigmodel_jax.dataio import image_ops
from bigmodel_jax.errors import ConfigError


def frechet_distance(mean_a, cov_a, mean_b, cov_b) -> float:
  """||mean_a - mean_b||^2 + Tr(cov_a + cov_b - 2 (cov_a cov_b)^(1/2)):
  the squared 2-Wasserstein distance of two Gaussians."""
  root = scipy.linalg.sqrtm(np.asarray(cov_a, np.float64) @ cov_b)
  root = np.real(root)  # sqrtm leaves tiny imaginary parts from round-off.
  return float(np.sum((np.asarray(mean_a) - mean_b) ** 2) +
               np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root))


def features_distance(a: np.ndarray, b: np.ndarray) -> float:
  """The Fréchet distance of the Gaussians fitted to two feature sets."""
  return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0),
                          np.cov(b, rowvar=False))


class Evaluator:
  every_steps = 0  # From the block.

  def __init__(self, block, exp):
    have = capabilities.parts(exp.family, exp.task, exp.config.model, None)
    capabilities.require(have, "generate_images",
                         f"model {exp.config.model.name!r}")
    if not block.get("classifier"):
      raise ConfigError("generated_images needs `classifier`: the workdir "
                        "of a trained classifier of these images.")
    self.classifier = runs.load(block.classifier)
    self.classifier.require("image_features")
    self.exp, self.split = exp, block.get("split", "test")
    self.every_steps = block.get("every_steps", 0)
    self.num_samples = block.get("num_samples", 1000)
    self.conditional = "class_conditional" in have
    self.latent_dim = have["image_generation"]
    self.num_classes = self.classifier.config.model.num_classes
    source = exp.config.input
    target = self.classifier.config.input
    self.to_classifier = image_ops.rescaled(
        image_ops.value_bounds(source.eval_pp, source.image_size,
                               source.channels),
        image_ops.value_bounds(target.eval_pp, source.image_size,
                               source.channels))
    model, variables = self.classifier.model, self.classifier.variables
    self.classify = jax.jit(lambda x: (
        model.apply(variables, x, features=True),
        jax.nn.softmax(model.apply(variables, x))))
    self.generate = jax.jit(lambda v, z, labels: exp.model.apply(
        v, z, labels, method="generate"))
    self.real = self._scored(self._split_images(self.split))[0]
    self.fid_floor = features_distance(
        self._scored(self._split_images(source.train_split))[0], self.real)

  def _split_images(self, split: str) -> np.ndarray:
    return np.concatenate([
        np.asarray(b["inputs"])[np.asarray(b["weights"]) > 0]
        for b in self.exp.data.eval_batches(split)])

  def _scored(self, images: np.ndarray, chunk: int = 256) -> tuple:
    """(features, class probabilities) of images in the run's pixels."""
    out = [self.classify(self.to_classifier(images[i:i + chunk]))
           for i in range(0, len(images), chunk)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in out])
                 for k in range(2))

  def __call__(self, variables) -> tuple[dict, dict]:
    z = jax.random.normal(jax.random.key(0),
                          (self.num_samples, self.latent_dim))
    labels = np.arange(self.num_samples) % self.num_classes
    images = np.concatenate([
        np.asarray(self.generate(variables, z[i:i + 256], labels[i:i + 256]))
        for i in range(0, self.num_samples, 256)])
    features, probabilities = self._scored(images)
    predicted = probabilities.argmax(-1)
    share = np.bincount(predicted, minlength=self.num_classes) / len(predicted)
    entropy = -np.sum(share[share > 0] * np.log(share[share > 0]))
    out = {"fid": features_distance(features, self.real),
           "fid_floor": self.fid_floor,
           "coverage": float(np.mean(share >= 0.5 / self.num_classes)),
           "class_entropy": float(entropy / np.log(self.num_classes)),
           "confidence": float(probabilities.max(-1).mean())}
    if self.conditional:
      out["label_accuracy"] = float(np.mean(predicted == labels))
    return out, {}
