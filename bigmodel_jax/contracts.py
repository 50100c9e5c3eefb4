"""The contracts between the generic core and its plug-ins, as Protocols.

Three kinds of plug-in, each one file picked by name from the config
(`registry.get`), so adding one touches nothing generic:

  model family  bigmodel_jax/models/NAME.py   config.model.name
  input         bigmodel_jax/data/NAME.py     config.input.name
  task          bigmodel_jax/tasks/NAME.py    config.task.name (None: the
                                              family's `default_task`)

`registry.get` checks a module against its Protocol, and the classes it
exposes (`Input`, `Task`) against theirs, and names what is missing.
docs/architecture.md explains how they meet.
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

  def flops_per_item(self, model: nn.Module, params, args: tuple) -> float:
    """Training FLOPs per token (sequence models) or example; `args`: the
    model's arguments for a whole batch (`state.example_args`)."""

  # Optional hooks (None when absent).
  capabilities: Callable[[ml_collections.ConfigDict], dict] | None
  """config block -> {part: value} of what the model can do beyond its
  task's call (capabilities.py): "decode" (value: the longest context;
  `apply(v, tokens, decode=True, lengths=, mutable=["cache"])` prefills
  right-padded rows of `lengths` tokens into a cache whose variables carry
  logical axis names with a "batch" axis, then extends it a step at a
  time), "embed" (`apply(v, x, embed=True)` -> unit vectors (B, D) of token
  ids x; a family that also declares "pixels" embeds images x the same
  way: two towers, one space)."""
  load_hf: Callable[[str, ml_collections.ConfigDict], dict] | None
  """(Hugging Face checkpoint dir, config block) -> host variables
  ({"params": ..., and e.g. "batch_stats"}); every directory that
  `export_hf` describes loads."""
  export_hf: Callable[[dict, ml_collections.ConfigDict, list | None],
                      Any] | None
  """(variables, config block, class names) -> `hf.layout.HFExport`:
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

  def train_batch(self, step: int) -> Batch:
    """This process's rows of global training batch `step`."""

  def train_batches(self, start_step: int) -> Iterator[Batch]:
    """`train_batch(step)` for step = start_step, start_step + 1, ...
    (prefetched)."""

  def eval_batches(self, split: str | None = None) -> Iterator[Batch]: ...

  def num_eval_batches(self, split: str | None = None) -> int: ...

  def group_names(self, split: str | None = None) -> list[str] | None:
    """The groups (`input.groups`) whose (B, G) weights eval batches of
    `split` carry as "groups", or None (`grouped.py`)."""

  def example_ids(self, split: str | None = None) -> list[str]:
    """Stable ids of the split's examples in eval order (labelled inputs;
    `input.label_overrides` and `audit_labels` use them)."""

  def model_fields(self) -> dict:
    """Model config fields the data decides (vocab_size, num_classes)."""

  def save(self, workdir: str) -> None:
    """Writes what reading the run's outputs needs (tokenizer, labels)."""

  def train_size(self) -> int:
    """Training examples that `train_examples` indexes (federated clients
    and DP accounting; `StepInput` refuses in one line by default)."""

  def train_examples(self, indices, step: int) -> Batch:
    """The training examples at `indices` (global, not this process's
    rows), augmented as at step `step`: what clients' batches are."""

  def train_labels(self):
    """Every training example's class (label-skewed client partitions), or
    None (partitions by position, i.e. by document)."""


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
  `to_hf()` gives the same ids as a `tokenizers.Tokenizer` (for exports);
  an optional `hf_special_tokens()` names its special tokens there
  ({"pad_token": "<pad>", ...}: tokenizer_config.json)."""


@runtime_checkable
class Task(Protocol):
  """What is learned from a batch: how the model is called, the update, the
  metrics, and what its outputs give a run.

  `loss_task.LossTask` implements it for tasks that are one loss and one
  optimizer (language modelling, classification, ...): they define the
  `Loss` below and get the generic update of `steps.py`. A task whose
  update is something else (alternating generator and discriminator steps,
  several clients per step) defines `optimizer` and `train_step` itself,
  from the pieces `steps.py` exposes; see `tasks/gan.py`.

  A wrapper of the task (privacy.py, federated/) may add `accountant`
  (`privacy.Accountant`: what a run spends per step): train.py prints its
  `describe()`, logs `spent(step)` with every evaluation as privacy/NAME
  and trains to `limit()`. A wrapper whose step trains on several input
  batches (a federated round) adds `batches_per_step` (throughput) and
  `round_spec(batch_spec)` (the step's batch spec, for planning). Tasks
  have none of these.
  """
  name: str
  required_keys: frozenset  # Batch entries it needs ...
  optional_keys: frozenset  # ... and those it can use.
  capabilities: frozenset  # Parts its outputs give a run (capabilities.py).
  config_block: Callable[[], ml_collections.ConfigDict] | None
  """The task's settings, `config.NAME` (None: it has none)."""

  def model_args(self, batch: Batch) -> tuple:
    """The model's positional arguments for a batch: the one declaration of
    how the model is called, used to init, quantize, load, export and count
    FLOPs with the whole batch spec."""

  def apply(self, model: nn.Module, variables: dict, batch: Batch,
            **kwargs) -> Any:
    """The model's outputs on a batch (kwargs: train, rngs, mutable)."""

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
class Loss(Protocol):
  """What a loss task gives the generic update (`steps.make_train_step`)
  and what wrappers of it (distill.py) build on."""

  def sums(self, outputs, batch: Batch) -> dict:
    """Summed statistics of a (micro)batch, "loss" among them."""

  def normalizer(self, batch: Batch) -> Any:
    """Whole-batch counts the objective divides by."""

  def objective(self, sums: dict, normalizer) -> Any:
    """The scalar to differentiate; summed over microbatches it is the
    whole batch's."""

  def train_metrics(self, sums: dict) -> dict: ...

  def eval_sums(self, outputs, batch: Batch) -> dict: ...


@runtime_checkable
class Evaluator(Protocol):
  """One more evaluation of a training run (`config.evals`), at its own
  cadence; built as `Evaluator(block, exp)` from its config block and the
  `experiment.Experiment` (task, model, data, mesh)."""
  every_steps: int  # Evaluates every this many steps; 0: at the last only.

  def __call__(self, variables: dict) -> tuple[Metrics, dict]:
    """(scalars, JSON records) of the variables, logged as KEY/NAME."""


@runtime_checkable
class EvaluatorModule(Protocol):
  """An evaluator module: `Evaluator(block, exp)`."""
  Evaluator: type


@runtime_checkable
class TaskModule(Protocol):
  """A task module: `Task(config)` built from the resolved run config."""
  Task: type
