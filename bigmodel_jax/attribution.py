"""What a trained model's outputs come from: attributions, attention and
the logit lens, for any run whose family declares the parts
(capabilities.py):

  integrated_gradients / gradient_x_input
      per input unit (token or pixel) of a class logit. Text runs scale
      the output of the family's token-embedding module (part
      "token_embeddings": its name) from 0 (the baseline: positions and
      segments only) to the real embeddings, except at `fixed` positions
      (explain fixes the tokenizer's special tokens, so [CLS] and [SEP]
      are in the baseline too and get no credit); image runs scale the
      pixels from 0 (the mean image after `value_range(-1, 1)`).
      Completeness: integrated gradients sum to logit(input) -
      logit(baseline) up to the Riemann error of `steps` midpoints.
  attention / rollout
      every layer's attention probabilities, which the shared attention
      layer sows into "intermediates" when asked (part "attention"), and
      their rollout (Abnar & Zuidema 2020: the head-mean plus the
      residual identity, renormalised, multiplied through the layers).
  logit_lens
      each layer's residual stream (sown by the family's blocks as
      "residual") put through the final norm (part "lens": its module
      name) and the unembedding instead of the last layer's.

Modules are found by the names the family declares, through
`flax.linen.intercept_methods`; nothing here knows a family.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn


def _intercepting(name: str, change):
  """An interceptor that passes the output (or, with `inputs`, the first
  argument) of module `name`'s __call__ through `change`."""
  def interceptor(next_fun, args, kwargs, context):
    if context.module.name != name or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    return change(next_fun, args, kwargs)
  return interceptor


def _expand(mask, ndim: int):
  """A (B, T) mask with trailing axes to broadcast against ndim axes."""
  return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))


def _logits_fn(run, batch: dict, target, scale_name: str | None, fixed):
  """(alpha (B,), delta) -> (sum of the target logits, the unscaled
  input): the input is the output of module `scale_name` (text) or the
  batch's "inputs" (images), scaled by alpha (1 where `fixed`), plus
  delta."""
  def factor(alpha, delta):
    scale = alpha.reshape((-1,) + (1,) * (delta.ndim - 1))
    if fixed is None:
      return scale
    return jnp.where(_expand(fixed, delta.ndim), 1.0, scale)

  def fn(alpha, delta):
    seen = []
    if scale_name is None:
      seen.append(batch["inputs"])
      scaled = {**batch,
                "inputs": batch["inputs"] * factor(alpha, delta) + delta}
      logits = run.task.apply(run.model, run.variables, scaled, train=False)
    else:
      def change(next_fun, args, kwargs):
        out = next_fun(*args, **kwargs)
        seen.append(out)
        return out * factor(alpha, delta).astype(out.dtype) + delta
      with nn.intercept_methods(_intercepting(scale_name, change)):
        logits = run.task.apply(run.model, run.variables, batch,
                                train=False)
    picked = jnp.take_along_axis(logits, target[:, None], -1)[:, 0]
    return jnp.sum(picked), (picked, seen[0])
  return fn


def _input_shape(run, batch: dict, scale_name: str | None):
  if scale_name is None:
    return batch["inputs"].shape
  out = []

  def change(next_fun, args, kwargs):
    out.append(next_fun(*args, **kwargs))
    return out[-1]
  with nn.intercept_methods(_intercepting(scale_name, change)):
    jax.eval_shape(lambda: run.task.apply(run.model, run.variables, batch,
                                          train=False))
  return out[0].shape


def integrated_gradients(run, batch: dict, target, scale_name=None,
                         steps: int = 64, fixed=None) -> dict:
  """{"integrated_gradients", "gradient_x_input"} per input unit (summed
  over the last axis: embedding width or channels), "logit" and
  "baseline_logit" of each row's `target` class. `fixed` (B, T) marks
  units kept at their value on the whole path (zero credit)."""
  target = jnp.asarray(target, jnp.int32)
  shape = _input_shape(run, batch, scale_name)
  fixed = None if fixed is None else jnp.asarray(fixed, bool)
  fn = _logits_fn(run, batch, target, scale_name, fixed)
  grad = jax.jit(jax.grad(fn, argnums=1, has_aux=True))
  rows = shape[0]
  zeros = jnp.zeros(shape, jnp.float32)
  total = zeros
  for k in range(steps):  # Midpoints of [0, 1].
    g, _ = grad(jnp.full((rows,), (k + 0.5) / steps), zeros)
    total = total + g
  g_one, (logit, inputs) = grad(jnp.ones((rows,)), zeros)
  _, (baseline, _) = jax.jit(fn)(jnp.zeros((rows,)), zeros)
  inputs = jnp.asarray(inputs, jnp.float32)
  credit = jnp.sum(inputs * total / steps, -1)
  if fixed is not None:
    credit = jnp.where(_expand(fixed, credit.ndim), 0.0, credit)
  return {"integrated_gradients": np.asarray(credit),
          "gradient_x_input": np.asarray(jnp.sum(inputs * g_one, -1)),
          "logit": np.asarray(logit), "baseline_logit": np.asarray(baseline)}


def _natural(path) -> list:
  """A sort key of a tree path whose numbers compare as numbers."""
  text = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def sown(run, batch: dict, name: str) -> list:
  """The values the model sowed as `name` in "intermediates", one per
  layer in layer order (a scanned stack's leading axis split)."""
  _, state = run.task.apply(run.model, run.variables, batch, train=False,
                            mutable=["intermediates"])
  found = sorted(
      ((path, leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
          state.get("intermediates", {}))
       if any(getattr(k, "key", None) == name for k in path)),
      key=lambda item: _natural(item[0]))
  layers = []
  for _, leaf in found:
    stacked = leaf.ndim == (5 if name == "attention" else 4)
    layers.extend(list(leaf) if stacked else [leaf])
  return [np.asarray(x, np.float32) for x in layers]


def rollout(attention_maps: list, valid=None) -> np.ndarray:
  """(B, T, T) attention rollout of per-layer (B, H, T, T) maps; `valid`
  (B, T) masks padding out of the residual identity's renormalisation."""
  batch, _, length, _ = attention_maps[0].shape
  eye = np.broadcast_to(np.eye(length), (batch, length, length))
  out = eye.copy()
  for probs in attention_maps:
    mixed = 0.5 * probs.mean(1) + 0.5 * eye
    if valid is not None:
      mixed = mixed * valid[:, None, :]
    mixed = mixed / mixed.sum(-1, keepdims=True)
    out = mixed @ out
  return out


def logit_lens(run, batch: dict, norm_name: str) -> np.ndarray:
  """(layers + 1, B, T, vocab) logits of the embeddings and each layer's
  residual stream through module `norm_name` and the unembedding (the
  last row equals the model's own logits)."""
  residuals = sown(run, batch, "residual")

  @jax.jit
  def lens(residual):
    def change(next_fun, args, kwargs):
      return next_fun(residual, *args[1:], **kwargs)
    with nn.intercept_methods(_intercepting(norm_name, change)):
      return run.task.apply(run.model, run.variables, batch, train=False)

  return np.stack([np.asarray(lens(r)) for r in residuals])
