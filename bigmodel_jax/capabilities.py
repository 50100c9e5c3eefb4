"""What a run can do, from what its family, task and input declare.

Nothing generic asks which family or task a run has; commands and servers
ask for a capability, which holds when the run has all of its parts:

  part           declared by                   meaning
  next_token     task.capabilities             outputs are next-token logits
  classify       task.capabilities             outputs are class logits
  decode         family.capabilities(config)   `apply(..., decode=True,
                 (value: the longest context)  lengths=, mutable=["cache"])`
                                               prefills and extends a cache
  embed          family.capabilities(config)   `apply(v, x, embed=True)` gives
                                               unit-length vectors (B, D) of
                                               token ids x, or of images x
                                               when it also has "pixels"
  text           the input's tokenizer         the run reads and writes text
  token_embeddings  family.capabilities        the module (value: its name)
                                               whose output is the token
                                               embeddings
  pixels         family.capabilities           the model reads float images
  attention      family.capabilities           its attention layers sow their
                                               weights (layers/attention.py)
  image_prompt   family.capabilities           decoding takes `images=` at
                                               prefill (a captioner)
  source_prompt  family.capabilities           decoding takes `sources=`
                 (value: their length)         (B, S) token ids at prefill:
                                               an encoder reads the prompt
                                               (`tokenizer.encode_batch(
                                               texts, S)`) and the decoder
                                               starts from the tokenizer's
                                               pad_id (T5)
  lens           family.capabilities           the final norm (value: its
                                               module name) before the
                                               unembedding; blocks sow
                                               "residual"
  image_generation  family.capabilities        `apply(v, z, labels,
                 (value: the latent size)      method="generate")` gives
                                               images from latents z
  class_conditional family.capabilities        ... of the labels' classes
  image_features family.capabilities           `apply(v, images,
                                               features=True)` gives (B, D)
                                               features before the head
  word_vectors   family.capabilities           `apply(v, ids,
                                               method="vectors")` gives the
                                               raw vectors (B, D) of word
                                               ids (B,); the tokenizer's
                                               `word_ids()` are the ids of
                                               words, `words` names them
  anomaly_scores task.capabilities             `task.example_scores(outputs,
                                               batch)` gives {name: (B,)}
                                               per-example scores, higher =
                                               more anomalous

A capability a run lacks is refused in one line naming the parts missing
(or the part that excludes it: a model that decodes from an image or an
encoded text cannot continue or score text alone; it captions, or turns
text into text).
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
    "image_prompt": "its model family decodes from an image",
    "source_prompt": "its model family decodes from an encoded text",
    "anomaly_scores": "its task scores examples",
    "image_generation": "its model family generates images from latents",
    "class_conditional": "its model family generates images of a class",
    "image_features": "its model family gives image features",
    "word_vectors": "its model family has a vector per word",
}
# What a decoder continuing its prompt lacks: an image, or an encoder that
# reads the prompt.
PREFIXED = {"image_prompt", "source_prompt"}
CAPABILITIES = {  # name -> (parts needed, what uses it[, parts it excludes])
    "generate": ({"next_token", "decode", "text"},
                 "sample, /v1/completions, /v1/chat/completions", PREFIXED),
    "text_to_text": ({"next_token", "decode", "text", "source_prompt"},
                     "sample, /v1/completions, /v1/chat/completions (the "
                     "prompt is the input text), the text_to_text "
                     "evaluator"),
    "score_text": ({"next_token", "text"}, "evaluate --text", PREFIXED),
    "embed": ({"embed", "text"}, "/v1/embeddings"),
    "embed_image": ({"embed", "pixels"}, "/v1/embeddings of images"),
    "caption": ({"next_token", "decode", "text", "image_prompt"},
                "sample --image, /v1/chat/completions with an image, the "
                "captions evaluator"),
    "classify": ({"classify"}, "/v1/classify"),
    "explain_text": ({"classify", "token_embeddings", "text"},
                     "explain: integrated gradients of tokens"),
    "explain_image": ({"classify", "pixels"},
                      "explain: integrated gradients of pixels"),
    "attention_maps": ({"attention"}, "explain: attention maps, rollout"),
    "logit_lens": ({"next_token", "lens", "text"}, "explain: logit lens"),
    "score_anomalies": ({"anomaly_scores"}, "the anomaly evaluator"),
    "generate_images": ({"image_generation"}, "the generated_images "
                        "evaluator"),
    "image_features": ({"image_features", "classify"},
                       "the generated_images evaluator's classifier"),
    "word_vectors": ({"word_vectors", "text"}, "the word_vectors evaluator, "
                     "export --format word2vec"),
}


def parts(family, task, model_config, tokenizer) -> dict:
  """Part name -> its value (the context length of "decode", else None)."""
  found = dict.fromkeys(task.capabilities)
  if family.capabilities is not None:
    found.update(family.capabilities(model_config))
  if tokenizer is not None:
    found["text"] = None
  return found


def _needs(name: str) -> tuple[set, str, set]:
  needs, uses, *excludes = CAPABILITIES[name]
  return needs, uses, (excludes[0] if excludes else set())


def of(have: dict) -> list[str]:
  """The capabilities that `parts` make."""
  return [name for name in CAPABILITIES
          if _needs(name)[0] <= have.keys() and
          not _needs(name)[2] & have.keys()]


def of_evaluated_run(exp, name: str, evaluator: str) -> dict:
  """The parts of an experiment's run (its input's tokenizer, if any);
  ConfigError unless they make `name`."""
  have = parts(exp.family, exp.task, exp.config.model,
               getattr(exp.data, "tokenizer", None))
  require(have, name, f"The {evaluator} evaluator's run")
  return have


def require(have: dict, name: str, what: str) -> None:
  """ConfigError naming the missing (or excluding) parts unless `have`
  makes `name`."""
  needs, uses, excludes = _needs(name)
  missing = sorted(needs - have.keys())
  excluded = sorted(excludes & have.keys())
  if missing or excluded:
    raise ConfigError(
        f"{what} cannot {name.replace('_', ' ')} (used by {uses}): " + (
            "it lacks " + ", ".join(f"{part!r} ({PARTS[part]})"
                                    for part in missing)
            if missing else ", ".join(f"{part!r}: {PARTS[part]}"
                                      for part in excluded) +
            " (it does not continue text)") + ".")
