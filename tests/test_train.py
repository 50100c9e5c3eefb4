"""Real tiny trainings: sharding equality, resume, NaN stop, entrypoints."""
import json
import os
import struct

import jax
import numpy as np
import pytest

from bigmodel_jax import metric_writer, sample, train
from conftest import EXPERIMENT, run_steps


def _tensorboard_scalars(path: str) -> dict:
  """{(tag, step): value} of a TensorBoard event file, read as TensorBoard
  does: length-prefixed records with CRCs, each an Event proto."""
  from tensorboardX.crc32c import crc32c
  from tensorboardX.proto import event_pb2

  def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xa282ead8) & 0xffffffff

  data, at, scalars = open(path, "rb").read(), 0, {}
  while at < len(data):
    header = data[at:at + 8]
    (length,), (header_crc,) = (struct.unpack("<Q", header),
                                struct.unpack("<I", data[at + 8:at + 12]))
    body = data[at + 12:at + 12 + length]
    (body_crc,) = struct.unpack("<I", data[at + 12 + length:at + 16 + length])
    assert header_crc == masked(header) and body_crc == masked(body)
    event = event_pb2.Event.FromString(body)
    for value in event.summary.value:
      if value.HasField("simple_value"):
        scalars[(value.tag, event.step)] = value.simple_value
    at += 16 + length
  return scalars


def test_mesh_2x2x2_gives_the_single_device_losses(tiny_config):
  single, _, _ = run_steps(tiny_config(mesh__data=1), jax.devices()[:1])
  sharded, exp, _ = run_steps(
      tiny_config(mesh__data=2, mesh__fsdp=2, mesh__tensor=2))
  np.testing.assert_allclose(sharded, single, rtol=1e-5)
  # The parameters really are split: fc kernel (embed, mlp) over fsdp x tensor.
  fc = exp.factory.shardings.params["block_0"]["fc"]["kernel"]
  assert fc.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_loss_falls_on_a_tiny_run(tmp_path, tiny_config):
  config = tiny_config(total_steps=40, optimizer__learning_rate=1e-2,
                       eval_every_steps=40, checkpoint_every_steps=40)
  last = train.train(config, str(tmp_path))
  records = metric_writer.read_jsonl(str(tmp_path))
  first = records[0]["train/loss"]
  assert first > 3.5  # ~ln(65) at initialisation.
  assert last["train/loss"] < first - 0.8
  assert last["val/loss"] < first - 0.8


def _train_losses(workdir):
  return {r["step"]: r["train/loss"] for r in metric_writer.read_jsonl(workdir)
          if "train/loss" in r}


def test_interrupted_and_resumed_run_gives_the_same_losses(tmp_path,
                                                           tiny_config):
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  common = dict(optimizer__decay_steps=6, model__dropout=0.1)
  train.train(tiny_config(total_steps=6, **common), whole)
  train.train(tiny_config(total_steps=4, **common), parts)  # "Interrupted".
  assert sorted(os.listdir(os.path.join(parts, "checkpoints"))) == ["2", "4"]
  train.train(tiny_config(total_steps=6, **common), parts)  # Same command.
  expected, got = _train_losses(whole), _train_losses(parts)
  assert sorted(got) == list(range(1, 7))
  for step in (5, 6):
    np.testing.assert_allclose(got[step], expected[step], rtol=1e-6)


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path, tiny_config):
  # Warmup's first step already learns (at 1e30 / 3): step 2's loss is NaN.
  config = tiny_config(optimizer__learning_rate=1e30)
  with pytest.raises(FloatingPointError, match="at step 2"):
    train.train(config, str(tmp_path))


def test_corrupt_checkpoint_is_a_clear_error_and_keeps_files(tmp_path,
                                                             tiny_config):
  train.train(tiny_config(total_steps=4), str(tmp_path))
  ckpt = tmp_path / "checkpoints" / "4"
  for path in ckpt.rglob("*"):
    if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
      path.write_bytes(b"garbage")
  before = sorted(str(p) for p in ckpt.rglob("*"))
  with pytest.raises(RuntimeError,
                     match="Checkpoint .*4 is (corrupt|unreadable).*step 2"):
    train.train(tiny_config(total_steps=6), str(tmp_path))
  assert sorted(str(p) for p in ckpt.rglob("*")) == before


@pytest.mark.slow
def test_train_and_sample_entrypoints(tmp_path, capsys):
  workdir = str(tmp_path)
  # The real `cpu` variant, a few steps, sharded over a 2x2x2 mesh.
  args = ["--config", EXPERIMENT + ":cpu", "--workdir", workdir,
          "--config.total_steps=4", "--config.log_every_steps=2",
          "--config.optimizer.warmup_steps=1",
          "--config.eval_every_steps=4", "--config.input.eval_steps=1",
          "--config.mesh.data=2", "--config.mesh.fsdp=2",
          "--config.mesh.tensor", "2"]
  train.main(args)
  out = capsys.readouterr().out
  assert "step 4/2000" not in out and "step 4/4 | loss" in out
  assert "val/loss" in out
  records = metric_writer.read_jsonl(workdir)
  keys = set().union(*records)
  assert {"step", "train/loss", "val/loss", "train/learning_rate",
          "train/tokens_per_sec"} <= keys
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  assert config["model"]["vocab_size"] == 65 and config["total_steps"] == 4
  events = [n for n in os.listdir(workdir) if n.startswith("events.out.")]
  scalars = _tensorboard_scalars(os.path.join(workdir, events[0]))
  assert scalars[("train/loss", 4)] == pytest.approx(
      [r for r in records if "train/loss" in r][-1]["train/loss"])

  sample.main(["--workdir", workdir, "--prompt", "ROMEO:",
               "--max_new_tokens", "70", "--temperature", "0.8",
               "--top_k", "200"])
  text = capsys.readouterr().out.split("\n-----")[0]
  assert text.startswith("ROMEO:") and len(text) == len("ROMEO:") + 70


def test_profile_steps_write_a_trace_for_tensorboard(tmp_path, tiny_config):
  train.train(tiny_config(total_steps=4, profile_steps=(2, 3)), str(tmp_path))
  traces = list((tmp_path / "plugins" / "profile").rglob("*.xplane.pb"))
  assert traces and traces[0].stat().st_size > 0
