"""Contrastive image-text learning (CLIP): symmetric InfoNCE over the batch.

Batch: "images", "texts" (the model's two inputs); optional "weights"
(eval padding) and "targets" (class labels, for zero-shot evaluators; the
loss ignores them). The model gives unit embeddings "image", "text" (B, E)
and "scale"; the logits are scale * image . text^T, the loss the mean of
the image->text and text->image cross-entropies with each example's own
pair as its class.

The negatives are the whole global batch: under jit the batch is one array
whatever the mesh, so XLA gathers the embeddings across data shards and a
run's numbers do not depend on the mesh. Gradient accumulation (fewer
negatives per microbatch) and per-example DP-SGD (an example alone has no
negatives) would change the loss: both are refused. Padding rows (weight 0)
are neither examples nor negatives.
"""
import jax.numpy as jnp
import optax

from bigmodel_jax import loss_task, privacy
from bigmodel_jax.errors import ConfigError


class Task(loss_task.LossTask):
  name = "contrastive"
  required_keys = frozenset({"images", "texts"})
  optional_keys = frozenset({"weights", "targets"})

  def __init__(self, config):
    super().__init__(config)
    if config.get("grad_accum_steps", 1) > 1:
      raise ConfigError(
          "The contrastive loss's negatives are the whole batch: "
          f"grad_accum_steps={config.grad_accum_steps} would shrink them; "
          "set it to 1 (shard the batch over more devices instead).")
    if privacy.enabled(config):
      raise ConfigError("The contrastive loss couples the examples of a "
                        "batch, so DP-SGD's per-example gradients do not "
                        "bound an example's influence: unset config.dp.")

  def model_args(self, batch: dict) -> tuple:
    return (batch["images"], batch["texts"])

  def sums(self, outputs, batch: dict) -> dict:
    weights = batch.get("weights")
    if weights is None:
      weights = jnp.ones(batch["texts"].shape[:1], jnp.float32)
    logits = outputs["scale"] * jnp.einsum(
        "ie,te->it", outputs["image"], outputs["text"],
        preferred_element_type=jnp.float32)
    real = weights > 0
    logits = jnp.where(real[None, :] & real[:, None], logits, -1e9)
    pairs = jnp.arange(logits.shape[0])
    losses = (optax.softmax_cross_entropy_with_integer_labels(logits, pairs) +
              optax.softmax_cross_entropy_with_integer_labels(logits.T,
                                                              pairs)) / 2
    hits = lambda x: jnp.sum((jnp.argmax(x, -1) == pairs) * weights)
    return {"loss": jnp.sum(losses * weights), "count": jnp.sum(weights),
            "image_to_text": hits(logits), "text_to_image": hits(logits.T),
            "scale": outputs["scale"] * jnp.sum(weights)}

  def normalizer(self, batch: dict):
    weights = batch.get("weights")
    return (jnp.sum(weights) if weights is not None
            else batch["texts"].shape[0])

  def train_metrics(self, sums: dict) -> dict:
    """Loss, in-batch top-1 accuracy each way, the logits' scale."""
    return {"loss": sums["loss"] / sums["count"],
            "image_to_text": sums["image_to_text"] / sums["count"],
            "text_to_image": sums["text_to_image"] / sums["count"],
            "scale": sums["scale"] / sums["count"]}
