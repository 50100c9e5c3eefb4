"""The serving config: slots, batching, limits and the price table.

`experiments/serving.py` builds on `defaults()`; every key can be overridden
on the command line (`--config.slots=8`, `--config.prices.default.per_1k_output=0.002`).
"""
import ml_collections

from bigmodel_jax.errors import ConfigError
from bigmodel_jax.serving.ledger import Price


def defaults() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.slots = 32  # Sequences decoded together (1: one request at a time).
  config.decode_steps = 4  # Tokens per decode call (one host round trip).
  config.warm_up = True  # Compile every step before taking requests.
  config.encoder_batch = 32  # Most inputs of one encoder call.
  # Input units an image in a chat message is billed as (OpenAI counts a
  # low-detail image as 85 tokens).
  config.image_tokens = 85
  config.encoder_window_ms = 5.0  # How long a call waits for more inputs.
  config.key_cache_seconds = 1.0  # A revoked key works at most this long.
  config.max_body_bytes = 1 << 20
  config.max_inputs = 256  # Texts or images in one request.
  config.default_max_tokens = 16  # /v1/completions without max_tokens.
  config.max_n = 8  # Most choices per request.
  # Slow or idle clients: a request's head must arrive within
  # header_timeout_seconds of its first byte (or of the connection), its
  # body within body_timeout_seconds (408); beyond max_connections open
  # connections, new requests get 503.
  config.header_timeout_seconds = 10.0
  config.body_timeout_seconds = 30.0
  config.max_connections = 1024
  # A call's hold in the ledger is leased for hold_seconds and renewed while
  # it runs: a server that dies frees its holds within that time. Answers of
  # calls with a client's X-Request-Id are kept replay_hours for retries.
  config.hold_seconds = 60.0
  config.replay_hours = 24.0
  # The mesh a model is served on: its parameters and the KV cache are
  # placed by the run's own sharding rules (one size may be -1).
  config.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1,
                                           "tensor": 1})
  # USD per call and per 1,000 input/output tokens (images, for image
  # classifiers), by served model name; "default" for the rest.
  config.prices = ml_collections.ConfigDict({"default": {
      "per_call": 0.0, "per_1k_input": 0.0005, "per_1k_output": 0.0015}})
  return config


def prices(config) -> dict:
  """{model name or "default": Price} from `config.prices`."""
  table = {}
  for name, fields in config.prices.items():
    unknown = set(fields) - {"per_call", "per_1k_input", "per_1k_output"}
    values = {k: float(v) for k, v in fields.items()}
    if unknown or any(not v >= 0 for v in values.values()):
      raise ConfigError(f"config.prices.{name}={dict(fields)}: give "
                        "per_call, per_1k_input, per_1k_output >= 0.")
    table[name] = Price(**values)
  if "default" not in table:
    raise ConfigError("config.prices needs a \"default\" entry.")
  return table
