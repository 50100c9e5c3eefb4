"""The contracts between the generic core and its plug-ins, as Protocols.

Three kinds of plug-in, each one file picked by name from the config
(`registry.get`), so adding one touches nothing generic:

  model family  bigmodel_jax/models/NAME.py   config.model.name
  input         bigmodel_jax/data/NAME.py     config.input.name
  task          bigmodel_jax/tasks/NAME.py    config.task.name (None: the
                                              family's `default_task`)

`registry.get` checks a module against its Protocol and names what is
missing. docs/architecture.md explains how they meet.
"""
from typing import Any, Callable, Iterator, Protocol, runtime_checkable

import ml_collections
import optax
from flax import linen as nn

Batch = dict  # Name -> array; batch-major (leading axis: examples).
Metrics = dict  # Name -> scalar.


@runtime_checkable
class ModelFamily(Protocol):
  """A model family module (gpt, bert, vit, resnet, ...).

  `Config` is a frozen dataclass whose field defaults are the only defaults
  of the family; `model_config` turns a variant name into a config block with
  every field explicit. Fields without a default that the data knows
  (vocab_size, num_classes) stay None until `Input.model_fields` fills them.
  The optional hooks are always declared: None where the family has none.
  """
  Config: type

  def model_config(self, variant: str, **overrides
                   ) -> ml_collections.ConfigDict: ...

  def make(self, config: ml_collections.ConfigDict) -> nn.Module: ...

  def default_task(self, config: ml_collections.ConfigDict) -> str:
    """The task a config of this family trains by default ("lm", ...)."""

  def num_params(self, params) -> int: ...

  def flops_per_item(self, model: nn.Module, params, input_shape) -> float:
    """Training FLOPs per token (sequence models) or example."""

  # Optional hooks (None when absent).
  load_hf: Callable[[str, ml_collections.ConfigDict], dict] | None
  """(Hugging Face checkpoint dir, config block) -> host variables
  ({"params": ..., and e.g. "batch_stats"}); every directory that
  `export_hf` describes loads."""
  export_hf: Callable[[dict, ml_collections.ConfigDict, list | None],
                      Any] | None
  """(variables, config block, class names) -> `models.hf_layout.HFExport`:
  the Hugging Face directory that reproduces the model, with the reference
  that verifies it; raises `errors.NotExportable` (one line naming the
  setting) where transformers has no faithful equivalent."""
  adapt_params: Callable[[dict, Any], dict] | None
  """(loaded params, abstract target params) -> params fitted to the target
  (e.g. resampled position embeddings, a restarted head)."""
  trainable_presets: Callable[[ml_collections.ConfigDict], dict] | None
  """config block -> {preset name: regex over "/"-joined parameter paths}."""


@runtime_checkable
class Input(Protocol):
  """One process's share of the batches of every split.

  Train batches are a pure function of (seed, step), so a resumed run and
  any process count see the same global batches. `split` None means
  `input.eval_split`; any split the data has can be evaluated (this is how
  `input.test_split` works for every input).
  """
  class_names: list[str] | None  # Classifiers' label names, else None.

  def train_batches(self, start_step: int) -> Iterator[Batch]: ...

  def eval_batches(self, split: str | None = None) -> Iterator[Batch]: ...

  def num_eval_batches(self, split: str | None = None) -> int: ...

  def model_fields(self) -> dict:
    """Model config fields the data decides (vocab_size, num_classes)."""

  def save(self, workdir: str) -> None:
    """Writes what reading the run's outputs needs (tokenizer, labels)."""


@runtime_checkable
class InputModule(Protocol):
  """A data module: shapes come from the config alone (for planning)."""
  Input: type  # Input(config.input, *, seed, process_index, process_count).

  def batch_spec(self, config: ml_collections.ConfigDict) -> dict:
    """Name -> jax.ShapeDtypeStruct of a global training batch."""

  def units(self, config: ml_collections.ConfigDict) -> tuple[str, int]:
    """("tokens" or "images", how many a global batch holds)."""

  load_tokenizer: Callable[[str], Any] | None
  """workdir -> the tokenizer the run saved; None for non-text inputs. Its
  `to_hf()` gives the same ids as a `tokenizers.Tokenizer` (for exports)."""


@runtime_checkable
class Task(Protocol):
  """What is learned from a batch: the loss, the update, the metrics.

  `tasks/base.py:LossTask` implements it for tasks that are one loss and one
  optimizer (language modelling, classification, ...): they only define the
  loss. A task whose update is something else (alternating generator and
  discriminator steps, a frozen teacher, several clients per step) defines
  `optimizer` and `train_step` itself; see `tasks/gan.py`.
  """
  name: str
  required_keys: frozenset  # Batch entries it needs ...
  optional_keys: frozenset  # ... and those it can use.

  def optimizer(self, trainable: Callable | None
                ) -> optax.GradientTransformation: ...

  def train_step(self, model: nn.Module, tx: optax.GradientTransformation,
                 trainable: Callable | None) -> Callable:
    """The pure update (TrainState, batch, rng) -> (TrainState, metrics);
    metrics hold "train/..." scalars and a boolean "finite"."""

  def eval_step(self, model: nn.Module) -> Callable:
    """(variables, batch) -> sums, added up over an evaluation's batches."""

  def summarize(self, totals: dict) -> Metrics:
    """Scalars (floats) from an evaluation's summed outputs."""

  def report(self, totals: dict, class_names: list[str] | None
             ) -> tuple[dict, str | None]:
    """(JSON records for metrics.jsonl, a text table or None) of an eval."""


@runtime_checkable
class TaskModule(Protocol):
  """A task module: `Task(config)` built from the resolved run config."""
  Task: type
