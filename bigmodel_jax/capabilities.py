"""What a run can do, from what its family, task and input declare.

Nothing generic asks which family or task a run has; commands and servers
ask for a capability, which holds when the run has all of its parts:

  part           declared by                   meaning
  next_token     task.capabilities             outputs are next-token logits
  classify       task.capabilities             outputs are class logits
  decode         family.capabilities(config)   `apply(..., decode=True,
                 (value: the longest context)  lengths=, mutable=["cache"])`
                                               prefills and extends a cache
  embed          family.capabilities(config)   `apply(..., embed=True)` gives
                                               unit-length vectors (B, D)
  text           the input's tokenizer         the run reads and writes text
  token_embeddings  family.capabilities        the module (value: its name)
                                               whose output is the token
                                               embeddings
  pixels         family.capabilities           the model reads float images
  attention      family.capabilities           its attention layers sow their
                                               weights (layers/attention.py)
  lens           family.capabilities           the final norm (value: its
                                               module name) before the
                                               unembedding; blocks sow
                                               "residual"

A capability a run lacks is refused in one line naming the parts missing.
"""
from bigmodel_jax.errors import ConfigError

PARTS = {
    "next_token": "its task predicts the next token",
    "classify": "its task predicts classes",
    "decode": "its model family decodes with a cache",
    "embed": "its model family embeds",
    "text": "its input has a tokenizer",
    "token_embeddings": "its model family names its token embeddings",
    "pixels": "its model family reads images",
    "attention": "its model family sows attention weights",
    "lens": "its model family names its final norm",
}
CAPABILITIES = {  # name -> (parts needed, what uses it)
    "generate": ({"next_token", "decode", "text"},
                 "sample, /v1/completions, /v1/chat/completions"),
    "score_text": ({"next_token", "text"}, "evaluate --text"),
    "embed": ({"embed", "text"}, "/v1/embeddings"),
    "classify": ({"classify"}, "/v1/classify"),
    "explain_text": ({"classify", "token_embeddings", "text"},
                     "explain: integrated gradients of tokens"),
    "explain_image": ({"classify", "pixels"},
                      "explain: integrated gradients of pixels"),
    "attention_maps": ({"attention"}, "explain: attention maps, rollout"),
    "logit_lens": ({"next_token", "lens", "text"}, "explain: logit lens"),
}


def parts(family, task, model_config, tokenizer) -> dict:
  """Part name -> its value (the context length of "decode", else None)."""
  found = dict.fromkeys(task.capabilities)
  if family.capabilities is not None:
    found.update(family.capabilities(model_config))
  if tokenizer is not None:
    found["text"] = None
  return found


def of(have: dict) -> list[str]:
  """The capabilities that `parts` make."""
  return [name for name, (needs, _) in CAPABILITIES.items()
          if needs <= have.keys()]


def require(have: dict, name: str, what: str) -> None:
  """ConfigError naming the missing parts unless `have` makes `name`."""
  needs, uses = CAPABILITIES[name]
  missing = sorted(needs - have.keys())
  if missing:
    raise ConfigError(
        f"{what} cannot {name.replace('_', ' ')} (used by {uses}): it lacks " +
        ", ".join(f"{part!r} ({PARTS[part]})" for part in missing) + ".")
