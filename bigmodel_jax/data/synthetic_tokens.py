"""Random token batches: language-model shapes without a dataset.

For throughput measurements, planning and smoke tests of large configs (the
input pipeline out of the picture). Tokens are uniform over
`input.vocab_size`, a pure function of (seed, step, process); there is
nothing to learn, so the loss stays near ln(vocab_size).
"""
import numpy as np

from bigmodel_jax.dataio.common import StepInput, lm_batch_spec, token_units

batch_spec = lm_batch_spec
units = token_units


class Input(StepInput):

  def model_fields(self) -> dict:
    return {"vocab_size": self.config.vocab_size}

  def _batch(self, key) -> dict:
    """This process's rows of the global batch drawn with `key`."""
    rng = np.random.default_rng(key)
    tokens = rng.integers(0, self.config.vocab_size,
                          (self.config.batch_size, self.config.seq_len + 1),
                          dtype=np.int32)[self._rows]
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}

  def train_batch(self, step: int) -> dict:
    return self._batch([self.seed, step])

  def eval_batches(self, split: str | None = None):
    """Every split is random tokens: `eval_steps` fixed batches."""
    del split
    for i in range(self.config.eval_steps):
      yield self._batch([self.seed, 1 << 30, i])

  def save(self, workdir: str) -> None:
    del workdir  # Nothing to save.


load_tokenizer = None  # Synthetic tokens have no text.
