"""Config loading and overrides; the TFDS text input."""
import os

import numpy as np
import pytest

from bigmodel_jax import config_loader, distributed, perf, train
from bigmodel_jax.data import char_lm
from conftest import EXPERIMENT


def test_variants_follow_the_nanogpt_recipes():
  cpu = config_loader.load(EXPERIMENT + ":cpu")
  assert (cpu.model.num_layers, cpu.model.num_heads, cpu.model.emb_dim) == (
      4, 4, 128)
  assert (cpu.input.seq_len, cpu.model.block_size, cpu.input.batch_size,
          cpu.total_steps) == (64, 64, 12, 2000)
  gpu = config_loader.load(EXPERIMENT)  # `gpu` is the default.
  assert (gpu.model.num_layers, gpu.model.emb_dim, gpu.model.dropout,
          gpu.input.seq_len, gpu.input.batch_size, gpu.total_steps) == (
              6, 384, 0.2, 256, 64, 5000)


def test_overrides_are_typed_and_seq_len_moves_block_size():
  config = config_loader.load(EXPERIMENT + ":cpu", config_loader.parse_overrides(
      ["--config.optimizer.learning_rate=3e-4", "--config.model.num_layers",
       "2", "--config.input.seq_len=32", "--config.input.data_dir=/x"]))
  assert config.optimizer.learning_rate == 3e-4
  assert config.model.num_layers == 2
  assert config.model.block_size == 32
  assert config.input.data_dir == "/x"


def test_misspelled_key_exits_non_zero_naming_it(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    train.main(["--config", EXPERIMENT + ":cpu", "--workdir", str(tmp_path),
                "--config.optimizer.learning_rat=3e-4"])
  assert exit_info.value.code != 0
  err = capsys.readouterr().err
  assert "optimizer.learning_rat" in err
  assert "optimizer.learning_rate" in err  # The suggestion.


@pytest.mark.parametrize("bad", [{"model.num_layers": "two"},
                                 {"model": "3"}])
def test_bad_values_are_config_errors(bad):
  with pytest.raises(config_loader.ConfigError, match="(?i)config key"):
    config_loader.load(EXPERIMENT + ":cpu", bad)


def test_unknown_variant_and_missing_file_are_clear_errors():
  with pytest.raises(ValueError, match="Unknown variant 'tpu'"):
    config_loader.load(EXPERIMENT + ":tpu")
  with pytest.raises(config_loader.ConfigError, match="does not exist"):
    config_loader.load("experiments/nope.py:cpu")


def _input(seed=0, **overrides):
  config = config_loader.load(EXPERIMENT + ":cpu", overrides)
  return char_lm.Input(config.input, seed=seed, process_index=0,
                         process_count=1)


def test_batches_are_deterministic_windows_with_shifted_targets():
  data, again, other = _input(), _input(), _input(seed=1)
  batch = data.train_batch(7)
  assert batch["inputs"].shape == (12, 64)
  np.testing.assert_array_equal(batch["inputs"], again.train_batch(7)["inputs"])
  assert not np.array_equal(batch["inputs"], data.train_batch(8)["inputs"])
  assert not np.array_equal(batch["inputs"], other.train_batch(7)["inputs"])
  np.testing.assert_array_equal(batch["inputs"][:, 1:],
                                batch["targets"][:, :-1])
  prefetched = data.train_batches(7)
  np.testing.assert_array_equal(next(prefetched)["targets"],
                                batch["targets"])
  evals = [list(data.eval_batches()), list(again.eval_batches())]
  assert len(evals[0]) == 20
  for a, b in zip(*evals):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])


def test_tokenizer_is_the_training_alphabet_and_round_trips(tmp_path):
  data = _input()
  assert data.vocab_size == 65
  text = "ROMEO:\nWhat, ho!"
  assert data.tokenizer.decode(data.tokenizer.encode(text)) == text
  data.save(str(tmp_path))
  loaded = char_lm.load_tokenizer(str(tmp_path))
  assert loaded.chars == data.tokenizer.chars
  with pytest.raises(ValueError, match="not in the vocabulary"):
    loaded.encode("naïve")


def test_process_shares_split_the_global_batch():
  config = config_loader.load(EXPERIMENT + ":cpu")
  shares = [char_lm.Input(config.input, seed=0, process_index=i,
                            process_count=2) for i in range(2)]
  a, b = (s.train_batch(3)["inputs"] for s in shares)
  assert a.shape == b.shape == (6, 64) and not np.array_equal(a, b)


def test_a_missing_dataset_is_prepared_or_says_how_to_prepare_it(tmp_path):
  # tiny_shakespeare is prepared from the data home (../shared/data here).
  assert _input(**{"input.data_dir": str(tmp_path)}).vocab_size == 65
  assert os.listdir(tmp_path / "tiny_shakespeare") == ["1.0.0"]
  with pytest.raises(FileNotFoundError, match="tfds build lm1b"):
    _input(**{"input.data_dir": str(tmp_path / "other"),
              "input.dataset": "lm1b"})


@pytest.mark.parametrize("env, expected", [
    ({}, False), ({"SLURM_NTASKS": "1"}, False), ({"SLURM_NTASKS": "4"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "localhost:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "a,b"}, True), ({"TPU_WORKER_HOSTNAMES": "a"}, False)])
def test_multi_process_start_is_requested_by_the_environment(env, expected):
  assert distributed.requested(env) is expected


def test_progress_yields_everything_and_reports_an_eta(capsys):
  assert list(perf.progress(iter(range(4)), 4, "eval batch",
                            every_seconds=0)) == [0, 1, 2, 3]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("eval batch 1/4 | ETA 0:00:0")
  assert len(lines) == 4
