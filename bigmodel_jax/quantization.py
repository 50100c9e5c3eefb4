"""Quantization through qwix: a method name, the qwix rules it means, and the
model that runs with them (post-training or quantization-aware).

  int8    int8 weights, one scale per output channel (or per `group_size`
          inputs); activations stay float
  int4    int4 weights, group-wise (default groups of 32 inputs, fewer
          where 32 does not divide a width), stored packed two to a byte
  w8a8    int8 weights and dynamically quantized int8 activations
          (convolutions included: ResNet)

Every weight multiplied through `jax.lax.dot_general` (`layers.Linear`,
classifier heads) is quantized; embedding tables (looked up, and tied to
GPT's output) stay float, as do convolutions under the weight-only methods
(qwix quantizes a convolution only together with its input). A compressed
run names its method in `config.compression`; `runs.load` rebuilds the
quantized model from it. `config.quantization.method` in a training config
trains with fake quantization (qwix's QT provider, straight-through
gradients), so the model learns weights that survive `compress`.

qwix keeps quantized weights as `WithAux(QArray(qvalue, scale))` pytrees;
checkpoints hold them as plain nested dicts (`to_pure` / `from_pure`).
"""
import re

import jax
import ml_collections
import qwix
from ml_collections.config_dict import placeholder
from flax import linen as nn

from bigmodel_jax.errors import ConfigError, NotFound

METHODS = {
    "int8": dict(weight_qtype="int8"),
    "int4": dict(weight_qtype="int4"),
    "w8a8": dict(weight_qtype="int8", act_qtype="int8"),
}
DEFAULT_GROUP = {"int8": 0, "int4": 32, "w8a8": 0}
_WEIGHT_ONLY_OPS = ("dot_general", "einsum")


def config_block() -> ml_collections.ConfigDict:
  """`config.quantization`: quantization-aware training with a method of
  METHODS ("int8", "int4", "w8a8"); None: off."""
  return ml_collections.ConfigDict(dict(method=placeholder(str),
                                        group_size=placeholder(int)))


def check(method: str | None, group_size: int | None = None) -> int:
  """The group size (0: per channel) of a known method; ConfigError else."""
  if method not in METHODS:
    raise ConfigError(f"Unknown quantization method {method!r}; have "
                      f"{sorted(METHODS)}.")
  group = DEFAULT_GROUP[method] if group_size is None else group_size
  if group < 0:
    raise ConfigError(f"group_size={group}: it must be >= 0 (0: one scale "
                      "per channel).")
  return group


def _embedding_modules(float_params) -> list[str]:
  """Module paths ("wte", "embeddings/word_embeddings") of embedding tables."""
  flat = jax.tree_util.tree_flatten_with_path(float_params)[0]
  return sorted({"/".join(str(k.key) for k in path[:-1]) for path, _ in flat
                 if str(path[-1].key) == "embedding"})


def rules(block, float_params, rule_class=qwix.QuantizationRule) -> list:
  """The qwix rules of a method: embedding tables first (kept float)."""
  method = block["method"]
  group = check(method, block.get("group_size"))
  keep = [rule_class(module_path=re.escape(path))
          for path in _embedding_modules(float_params)]
  ops = () if "act_qtype" in METHODS[method] else _WEIGHT_ONLY_OPS
  return keep + [rule_class(module_path=".*", op_names=ops,
                            tile_size=group or None, **METHODS[method])]


def _quantized(model: nn.Module, provider, args) -> nn.Module:
  """`model` under `provider`, its shapes checked on the model's `args`
  (`state.example_args`)."""
  qmodel = qwix.quantize_model(model, provider)
  try:
    jax.eval_shape(qmodel.init, jax.random.key(0), *args)
  except ValueError as e:
    if "cannot be tiled" not in str(e):
      raise
    raise ConfigError(f"group_size does not divide a weight's input width: "
                      f"{e} Choose a divisor, or 0 (one scale per "
                      "channel).") from None
  return qmodel


def ptq_model(model: nn.Module, block, float_params, args
              ) -> nn.Module:
  """`model` running with the quantized weights of `quantize`."""
  return _quantized(model, qwix.PtqProvider(rules(block, float_params)),
                    args)


def fitting_group(model: nn.Module, block, float_params, args
                  ) -> int:
  """The method's default group size, halved down to 8 until it divides
  every quantized width (small models: a 16-wide patch embedding), else 0
  (one scale per channel)."""
  group = check(block["method"])  # The default.
  while group >= 8:
    try:
      ptq_model(model, {**block, "group_size": group}, float_params,
                args)
      return group
    except ConfigError:
      group //= 2
  return 0


def group_size(model: nn.Module, block, float_params, args
               ) -> int:
  """`block`'s group size when set (checked), else `fitting_group`'s."""
  if block.get("group_size") is not None:
    return check(block["method"], block["group_size"])
  return fitting_group(model, block, float_params, args)


def qat_model(model: nn.Module, block, float_params, args
              ) -> nn.Module:
  """`model` training with fake quantization (straight-through)."""
  return _quantized(model, qwix.QtProvider(
      rules(block, float_params, qwix.QtRule)), args)


def configured(model: nn.Module, config, args) -> nn.Module:
  """`model` as a run's `config` runs it: with quantized weights when it
  is a compressed run (`compression.method` of METHODS), fake-quantized
  when it trains quantization-aware (`quantization.method`), else as is."""
  ptq = config.get("compression") or {}
  qat = config.get("quantization") or {}
  if ptq.get("method") in METHODS:
    wrap, block = ptq_model, ptq
  elif qat.get("method"):
    wrap, block = qat_model, qat
  else:
    return model
  float_params = nn.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                         *args)["params"])
  block = dict(block)
  block["group_size"] = group_size(model, block, float_params, args)
  return wrap(model, block, float_params, args)


def quantize(float_params, abstract_quantized_params):
  """The float parameters quantized as the PTQ model's abstract parameters
  say (jit it with the target shardings)."""
  return qwix.quantize_params(float_params, abstract_quantized_params)


def _key(entry) -> str:
  return str(entry.key if hasattr(entry, "key") else entry.name)


def to_pure(tree) -> dict:
  """Nested dicts of arrays: WithAux/QArray nodes become dict levels
  ("kernel/array/qvalue"), so checkpoints read and write them as any
  other parameter."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = out
    for entry in path[:-1]:
      node = node.setdefault(_key(entry), {})
    node[_key(path[-1])] = leaf
  return out


def from_pure(pure: dict, like):
  """The inverse of `to_pure`, with `like`'s pytree structure."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves = []
  for path, _ in paths:
    node = pure
    for entry in path:
      if _key(entry) not in node:
        raise NotFound(f"The checkpoint has no {'/'.join(map(_key, path))}"
                       " that this model needs.")
      node = node[_key(entry)]
    leaves.append(node)
  return jax.tree.unflatten(treedef, leaves)
