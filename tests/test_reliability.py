"""What survives what: poisoned states, a second run, corrupt checkpoints,
bad configs, damaged metrics, a full disk, user errors, divergence."""
import contextlib
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from bigmodel_jax import (checkpoints, config_loader, experiment, export,
                          metric_writer, registry, sample, serve, sweep,
                          tokenizer, train, workdirs)
from bigmodel_jax.errors import CheckpointError, ConfigError, Diverged
from conftest import EXPERIMENT, TINY

ROOT = pathlib.Path(__file__).resolve().parents[1]
ONE = jax.devices()[:1]


def _steps(workdir) -> list[int]:
  return checkpoints.steps(str(workdir))


def _main_error(capsys, main, args) -> tuple[int, str]:
  """(exit code, stderr) of an entrypoint that must fail cleanly."""
  with pytest.raises(SystemExit) as exit_info:
    main(args)
  err = capsys.readouterr().err
  assert "Traceback" not in err
  return exit_info.value.code, err


# 1. A non-finite state is never checkpointed.
def test_a_state_holding_nan_is_not_saved(tmp_path, tiny_config):
  # With eps=0 Adam's first update of the padded (never used) embedding rows
  # is 0/0: the loss and gradient stay finite while the state holds NaN.
  config = tiny_config(optimizer__eps=0.0, model__vocab_multiple=128,
                       checkpoint_every_steps=1)
  with pytest.raises(Diverged, match="hold NaN or inf after step 1; it is "
                     "not saved"):
    train.train(config, str(tmp_path), ONE)
  assert _steps(tmp_path) == []


@pytest.mark.parametrize("value", ["nan", "inf", "-1e-3"])
def test_a_non_finite_or_negative_learning_rate_is_refused_when_read(value):
  with pytest.raises(ConfigError, match=r"config.optimizer.learning_rate=.* "
                     "is not allowed: a finite number >= 0"):
    config_loader.load(EXPERIMENT + ":cpu",
                       {"optimizer.learning_rate": value})


# 2. One run per workdir.
def test_a_second_run_on_a_workdir_in_use_is_refused(tmp_path, capsys,
                                                     tiny_config):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from bigmodel_jax import "
       "workdirs; held = workdirs.lock(sys.argv[1]); held.__enter__(); "
       "print('locked', "
       "flush=True); time.sleep(120)", workdir],
      stdout=subprocess.PIPE, text=True, cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  try:
    assert holder.stdout.readline().strip() == "locked"
    code, err = _main_error(capsys, train.main, [
        "--config", EXPERIMENT + ":cpu", "--workdir", workdir])
    assert code == 2
    assert (f"in use by PID {holder.pid} on {socket.gethostname()}" in err)
    assert not os.path.exists(os.path.join(workdir, "config.json"))
  finally:
    holder.send_signal(signal.SIGKILL)  # A crash: the lock goes with it.
    holder.wait()
  train.train(tiny_config(total_steps=2), workdir, ONE)
  assert _steps(workdir) == [2]


def test_a_workdir_that_is_a_file_is_one_clear_line(tmp_path, capsys):
  path = tmp_path / "file"
  path.write_text("x")
  code, err = _main_error(capsys, train.main, [
      "--config", EXPERIMENT + ":cpu", "--workdir", str(path)])
  assert code == 2 and err.strip() == (
      f"error: --workdir {str(path)!r} is a file, not a directory.")


# 3. Corrupt checkpoints are detected at restore, naming what to do.
def test_garbage_inside_a_checkpoint_is_detected_and_nothing_is_changed(
    tmp_path, tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=4), workdir, ONE)
  files = [p for p in (tmp_path / "checkpoints" / "4").rglob("*")
           if p.is_file() and "metadata" not in p.name]
  biggest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(biggest.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 4096] = np.random.default_rng(0).bytes(
      len(data[middle:middle + 4096]))
  biggest.write_bytes(bytes(data))
  before = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*"))
  with pytest.raises(CheckpointError, match=r"Checkpoint .*/4 is (corrupt|"
                     r"unreadable).*Add --resume_from 2 to resume from "
                     r"step 2 \(the later checkpoints are set aside\)"):
    train.train(tiny_config(total_steps=6), workdir, ONE)
  after = sorted((str(p), p.stat().st_size) for p in tmp_path.rglob("*")
                 if p.name != "metrics.jsonl" and "tfevents" not in p.name)
  assert after == [b for b in before if "tfevents" not in b[0] and
                   not b[0].endswith("metrics.jsonl")]
  assert train.train(tiny_config(total_steps=6), workdir, ONE,
                     resume_from=2)["train/loss"] > 0  # Resumed from step 2.


def test_an_array_that_differs_from_its_checksum_is_named(tmp_path,
                                                          tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=2), workdir, ONE)
  sums_path = tmp_path / "checksums" / "2.json"
  sums = json.loads(sums_path.read_text())
  sums["params/block_0/fc/kernel"][0] += 1
  sums_path.write_text(json.dumps(sums))
  exp = experiment.build(tiny_config(total_steps=2), ONE)
  mgr = checkpoints.manager(workdir)
  with pytest.raises(CheckpointError, match=r"/2 is corrupt: 1 array\(s\) "
                     r"differ .* \(params/block_0/fc/kernel\)"):
    checkpoints.restore(mgr, exp.factory.abstract)
  mgr.close()
  with pytest.raises(CheckpointError, match="params/block_0/fc/kernel"):
    checkpoints.restore_params(workdir, exp.factory.abstract.params)


@pytest.mark.parametrize("damage, message", [
    (os.remove, "its checksum file .*/checksums/2.json is missing"),
    (lambda p: pathlib.Path(p).write_text('{"params/wte'),
     "its checksum file .*/checksums/2.json is unreadable"),
])
def test_a_checkpoint_without_readable_checksums_is_not_trusted(
    tmp_path, tiny_config, damage, message):
  """A missing checksum file used to turn verification off; a garbled
  one was a traceback."""
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=2), workdir, ONE)
  damage(str(tmp_path / "checksums" / "2.json"))
  exp = experiment.build(tiny_config(total_steps=2), ONE)
  mgr = checkpoints.manager(workdir)
  with pytest.raises(CheckpointError, match="/2 cannot be verified: " +
                     message):
    checkpoints.restore(mgr, exp.factory.abstract)
  mgr.close()
  with pytest.raises(CheckpointError, match=message):
    checkpoints.restore_params(workdir, exp.factory.abstract.params)


def test_a_checkpoint_of_another_config_says_so_in_a_few_lines(
    tmp_path, capfd, tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=2), workdir, ONE)
  capfd.readouterr()
  with pytest.raises(CheckpointError, match=r"saved with a different config:"
                     r" .* is \(.*32.*\) there and \(.*64.*\) in this config"
                     ) as error:
    train.train(tiny_config(total_steps=4, model__emb_dim=64), workdir, ONE)
  out, err = capfd.readouterr()
  assert "Event loop is closed" not in out + err
  assert len((out + err).splitlines()) < 10
  # The advice works: the run's own config.json resumes it.
  assert f"(--config {workdir}/config.json)" in str(error.value)
  train.main(["--config", f"{workdir}/config.json", "--workdir", workdir,
              "--config.total_steps=4", "--config.mesh.data=-1"])
  assert _steps(workdir) == [2, 4]


# 4. Config values that would destroy checkpoints or crash late.
@pytest.mark.parametrize("key, value", [
    ("keep_checkpoints", 0), ("input.eval_steps", 0), ("eval_every_steps", 0),
    ("log_every_steps", 0), ("checkpoint_every_steps", 0),
    ("grad_accum_steps", 0), ("input.batch_size", 0), ("input.batch_size", -8),
    ("total_steps", 0), ("optimizer.b2", 1.0), ("optimizer.grad_clip_norm", 0.0),
    ("optimizer.min_learning_rate", 1.0), ("pruning.sparsity", 1.0),
    ("pruning.frequency", 0), ("distill.temperature", 0.0),
    ("distill.alpha", 1.5),
])
def test_bad_values_are_refused_naming_the_key(key, value):
  with pytest.raises(ConfigError, match=rf"config.{key}={value!r} is not "
                     "allowed"):
    config_loader.load(EXPERIMENT + ":cpu", {key: value})


@pytest.mark.parametrize("experiment, key, value, allowed", [
    ("gpt_shakespeare_char.py:cpu", "dropout", 2.0, "a number in [0, 1)"),
    ("gpt_shakespeare_char.py:cpu", "num_layers", 0, "a whole number >= 1"),
    ("gpt_shakespeare_char.py:cpu", "lora_rank", -1, "a number >= 0"),
    ("gpt_shakespeare_char.py:cpu", "rope_theta", -1.0, "a finite number > 0"),
    ("bert_mlm.py", "layer_norm_eps", 0.0, "a finite number > 0"),
    ("vit_digits.py", "dropout", -0.5, "a number in [0, 1)"),
    ("resnet_digits.py", "bn_momentum", 1.0, "a number in [0, 1)"),
    ("gan_digits.py", "latent_dim", 0, "a whole number >= 1"),
])
def test_every_family_checks_its_fields_ranges(experiment, key, value,
                                               allowed):
  # The ranges come from the families' Config dataclasses, not a list.
  config = config_loader.load(str(ROOT / "experiments" / experiment),
                              {f"model.{key}": value})
  for name in ("vocab_size", "num_classes", "image_size", "channels"):
    if name in config.model and config.model[name] is None:
      config.model[name] = 8  # From the data, normally.
  family = registry.get("models", config.model.name)
  with pytest.raises(ConfigError, match=re.escape(
      f"config.model.{key}={value!r} is not allowed: {allowed}.")):
    family.make(config.model)


def test_num_heads_must_divide_the_width(tiny_config):
  with pytest.raises(ConfigError, match=r"num_heads=3 does not divide "
                     r"config.model.emb_dim=32"):
    experiment.build(tiny_config(model__num_heads=3), ONE)


def test_a_short_run_shortens_its_warmup_and_says_so(capsys):
  config = config_loader.load(EXPERIMENT + ":cpu", {"total_steps": 50})
  assert config.optimizer.warmup_steps == 5
  assert ("optimizer.warmup_steps=100 is not below the 50 decay steps; "
          "using 5") in capsys.readouterr().err


# 5. metrics.jsonl: no duplicates after a resume, damaged lines tolerated.
def test_a_resume_drops_records_past_the_restored_step(tmp_path, tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=6), workdir, ONE)
  os.rename(tmp_path / "checkpoints" / "6", tmp_path / "lost")  # Crash at 5.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "train/lo')  # A line cut off by a full disk.
  records = metric_writer.read_jsonl(workdir)  # Skips the damaged line.
  assert max(r["step"] for r in records) == 6
  train.train(tiny_config(total_steps=6), workdir, ONE)  # Resumes at 4.
  steps = [r["step"] for r in metric_writer.read_jsonl(workdir)
           if "train/loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]


# 6. A failed save stops the run at once with one clear line.
@contextlib.contextmanager
def _tmpfs(mount, size: str):
  """`mount` as a tmpfs of `size` (needs root, as in CI)."""
  mount.mkdir(parents=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}",
                           "tmpfs", str(mount)], capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a small filesystem here: {result.stderr}")
  try:
    yield mount
  finally:
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
  """A workdir whose checkpoints/ is a 600 KiB tmpfs."""
  with _tmpfs(tmp_path / "run" / "checkpoints", "600k"):
    yield tmp_path / "run"


def _train_process(workdir, code: str = "", **extra
                   ) -> subprocess.CompletedProcess:
  """The tiny GPT's train entrypoint in its own process (after `code`),
  saving every 5 steps of 400 (unless `extra` overrides say otherwise)."""
  overrides = {**TINY, "total_steps": 400, "checkpoint_every_steps": 5,
               "keep_checkpoints": 1000, "eval_every_steps": 400,
               "log_every_steps": 1, "mesh.data": 1, **extra}
  args = ["--config", EXPERIMENT + ":cpu", "--workdir", str(workdir)] + [
      f"--config.{k}={v}" for k, v in overrides.items()]
  script = (f"import sys; {code}\nfrom bigmodel_jax import train\n"
            f"train.main({args!r})")
  return subprocess.run([sys.executable, "-c", script], capture_output=True,
                        text=True, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu",
                             "XLA_FLAGS": ""})


def test_a_full_disk_stops_the_run_before_writing_with_one_line(small_disk):
  run = _train_process(small_disk)
  assert run.returncode == 1
  # The sizes depend on the checkpoint library's version: only their form.
  assert len(run.stderr.splitlines()) == 1, run.stderr[-3000:]
  assert re.fullmatch(
      re.escape(f"error: Not enough free space in {small_disk}/checkpoints "
                "for checkpoint 10: it needs about ") +
      r"[0-9.]+ MiB, [0-9.]+ MiB are free\. Stopping; the checkpoints "
      r"before it are kept\.", run.stderr.strip()), run.stderr[-3000:]
  assert _steps(small_disk) == [5]


@pytest.mark.serial  # Its async writes race the steps: alone.
def test_a_disk_filled_during_an_async_save_stops_the_next_step(small_disk):
  # Free space looks plentiful, so the save of step 10 starts and fails
  # half-way through in Orbax's background threads.
  run = _train_process(small_disk, "from bigmodel_jax import checkpoints; "
                       "checkpoints.free_bytes = lambda directory: 1 << 40")
  assert run.returncode == 1
  errors = [l for l in run.stderr.splitlines() if l.startswith("error:")]
  assert errors == [
      f"error: Writing a checkpoint to {small_disk}/checkpoints failed: No "
      "space left on device. Stopping; the checkpoints before it are kept."
  ], run.stderr[-3000:]
  logged = [int(l.split()[1].split("/")[0]) for l in run.stdout.splitlines()
            if l.startswith("step ")]
  assert max(logged) < 20  # Stopped within a few steps, not at step 400.
  assert _steps(small_disk) == [5]


_FILL_AT_STEP_6 = """
import os, time
from bigmodel_jax import metric_writer
write = metric_writer.MetricWriter.write_scalars
def filling(self, step, scalars):
  if step == 6:  # Something else fills the disk between two saves.
    saved = os.path.join(os.path.dirname(self.path), "checkpoints", "5")
    while not os.path.isdir(saved):  # Its async save has finished.
      time.sleep(0.05)
    try:
      with open(self.path + ".filler", "wb") as f:
        while True:
          f.write(bytes(4096)); f.flush()
    except OSError:
      pass
    # Longer than a page, so this write needs a new one: otherwise whether
    # the next writes fail depends on where the files' last pages end.
    scalars = {**scalars, **{f"pad/{i:04d}": 0.0 for i in range(400)}}
  write(self, step, scalars)
metric_writer.MetricWriter.write_scalars = filling
"""


@pytest.mark.serial  # Its async writes race the steps: alone.
def test_a_disk_filled_between_saves_stops_with_one_line(tmp_path):
  # It used to hang in 2 of 3 trials: TensorBoard's writer thread died and
  # the main thread waited on its queue forever, holding the workdir lock.
  with _tmpfs(tmp_path / "run", "2m") as run_dir:
    run = _train_process(run_dir, _FILL_AT_STEP_6, checkpoint_every_steps=5)
    assert run.returncode == 1, run.stderr[-3000:]
    assert len(run.stderr.splitlines()) == 1, run.stderr[-3000:]
    assert re.fullmatch(
        re.escape(f"error: Writing {run_dir}/") +
        r"(metrics\.jsonl|events\.out\.tfevents\.\*) failed: No space left on "
        r"device\. Stopping; the checkpoints before it are kept\.",
        run.stderr.strip()), run.stderr
    logged = [int(l.split()[1].split("/")[0]) for l in run.stdout.splitlines()
              if l.startswith("step ")]
    assert max(logged) < 10 and _steps(run_dir) == [5]
    os.remove(run_dir / "metrics.jsonl.filler")
    with workdirs.lock(str(run_dir)):  # Released, and the run goes on.
      pass
    assert _train_process(run_dir, total_steps=12).returncode == 0
    assert [r["step"] for r in metric_writer.read_jsonl(str(run_dir))
            if "train/loss" in r] == list(range(1, 13))


def test_a_full_disk_in_export_tokenizer_and_token_stores_is_one_line(
    tmp_path, capsys, tiny_config):
  workdir = str(tmp_path / "run")
  train.train(tiny_config(total_steps=2), workdir, ONE)
  text = str(ROOT / "experiments" / "gpt_text.py") + ":cpu"
  with _tmpfs(tmp_path / "small", "64k") as small:
    cases = [
        (export.main, ["--workdir", workdir, "--out", str(small / "hf")]),
        (export.main, ["--workdir", workdir, "--out", str(small / "jax"),
                       "--format", "jax"]),
        (tokenizer.main, ["--config", text, "--out", str(small / "t.json"),
                          "--config.input.vocab_size=4000"]),
        (train.main, ["--config", text, "--workdir", str(tmp_path / "text"),
                      "--config.input.store_dir", str(small),
                      "--config.input.batch_size=8"])]
    for main, args in cases:
      capsys.readouterr()
      code, err = _main_error(capsys, main, args)
      assert code == 1 and err == (
          "error: No space left on device. Free some space and run the same "
          "command again: it keeps nothing half-written.\n"), (args, err)
    # The token store stays to be resumed; nothing else is left behind.
    assert {p.name.split("-")[0] for p in small.iterdir()} == {"train"}


def test_a_truncated_checkpoint_is_one_line_from_the_command(tmp_path,
                                                             tiny_config):
  # The line used to be buried in TensorStore's "Event loop is closed"
  # tracebacks, printed from its threads as the reads in flight failed.
  workdir = tmp_path / "run"
  train.train(tiny_config(total_steps=2), str(workdir), ONE)
  for path in (workdir / "checkpoints" / "2").rglob("d/*"):
    os.truncate(path, 100)
  run = subprocess.run(
      [sys.executable, "-m", "bigmodel_jax.export", "--workdir", str(workdir),
       "--out", str(tmp_path / "out")], capture_output=True, text=True,
      env=_ENV, timeout=300)
  assert run.returncode == 2
  assert run.stderr.splitlines() == [
      f"error: Could not read the parameters of checkpoint {workdir}/"
      "checkpoints/2 (its metadata (default/_METADATA, manifest) is missing "
      "or unreadable)."]


def test_closed_event_loop_tracebacks_from_threads_are_dropped():
  script = r"""
import sys, threading, traceback
from bigmodel_jax import quiet_stderr
quiet_stderr.install()
def fail(message):
  try:
    raise RuntimeError(message)
  except RuntimeError:
    for part in traceback.format_exc().replace(": ", "|: |").split("|"):
      sys.stderr.write(part)  # In pieces, as the C++ side writes it.
for message in ("Event loop is closed", "something else"):
  thread = threading.Thread(target=fail, args=(message,))
  thread.start(); thread.join()
sys.stderr.write("main thread\n")
"""
  run = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, env=_ENV, timeout=60)
  assert "Event loop is closed" not in run.stderr
  assert run.stderr.count("Traceback") == 1
  assert run.stderr.endswith("RuntimeError: something else\nmain thread\n")


def test_half_written_checkpoints_of_a_crashed_run_are_removed(tmp_path,
                                                               tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=2), workdir, ONE)
  orphan = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp-1234"
  (orphan / "default").mkdir(parents=True)
  train.train(tiny_config(total_steps=4), workdir, ONE)
  assert not orphan.exists() and _steps(workdir) == [2, 4]


# 7 and 8. User errors: one line, exit 2.
def test_entrypoint_user_errors_are_one_line(tmp_path, capsys, tiny_config):
  workdir = str(tmp_path / "lm")
  train.train(tiny_config(total_steps=2), workdir, ONE)
  capsys.readouterr()
  cases = [
      (train.main, ["--config", EXPERIMENT + ":tpu", "--workdir", workdir],
       "Unknown variant 'tpu'"),
      (train.main, ["--config", EXPERIMENT + ":cpu", "--workdir", workdir,
                    "--config.mesh.data=3"], "Mesh {'data': 3"),
      (train.main, ["--config", EXPERIMENT + ":cpu", "--workdir", workdir,
                    "--config.input.batch_size=4"],
       "input.batch_size=4 is not divisible by the 8 batch shards"),
      (train.main, ["--config", EXPERIMENT + ":cpu", "--workdir",
                    str(tmp_path / "x"), "--config.input.batch_size=8",
                    "--config.input.dataset=lm1b",
                    "--config.input.data_dir", str(tmp_path / "empty")],
       "TFDS dataset 'lm1b' (split 'train') is not prepared in"),
      (sample.main, ["--workdir", workdir, "--step", "999"],
       "No checkpoint of step 999 in"),
      (sample.main, ["--workdir", workdir, "--prompt", "ROMEO€"],
       "Characters not in the vocabulary: ['€']"),
      (sample.main, ["--workdir", workdir, "--prompt", ""], "--prompt is empty"),
      (sample.main, ["--workdir", workdir, "--temperature", "-1"],
       "--temperature=-1.0 is not allowed"),
      (sample.main, ["--workdir", workdir, "--top_k", "-1"],
       "--top_k=-1 is not allowed"),
      (sample.main, ["--workdir", workdir, "--max_new_tokens", "-5"],
       "--max_new_tokens=-5 is not allowed"),
      (sample.main, ["--workdir", str(tmp_path / "nothing")],
       "is not a training run: it has no config.json"),
      (sweep.main, ["--config", EXPERIMENT + ":cpu", "--workdir",
                    str(tmp_path / "sweep"), "--parallel", "0"],
       "--parallel=0: it must be >= 1"),  # It used to wait forever.
      (serve.main, ["--workdir", workdir, "--port", "99999"],
       "--port=99999: it must be in 1..65535"),
  ]
  os.makedirs(tmp_path / "empty")
  for main, args, message in cases:
    code, err = _main_error(capsys, main, args)
    assert code == 2 and err.startswith("error: ") and message in err, (
        args, err)
    assert "prepared in another format" not in err


def test_sampling_a_run_that_is_not_a_language_model_says_so(tmp_path, capsys):
  workdir = str(tmp_path)
  train.train(config_loader.load(str(ROOT / "experiments" / "gan_digits.py"),
                                 {"total_steps": 2, "model.hidden_dim": 8}),
              workdir, ONE)
  code, err = _main_error(capsys, sample.main, ["--workdir", workdir])
  assert code == 2 and "(model 'gan', task 'gan') cannot generate" in err
  assert "it lacks 'decode' (its model family decodes with a cache), " \
      "'next_token'" in err


# 9. The last checkpoint that passed an evaluation survives rotation.
def test_divergence_keeps_the_last_good_checkpoint_out_of_rotation(
    tmp_path, tiny_config):
  workdir = str(tmp_path)
  common = dict(checkpoint_every_steps=1, keep_checkpoints=1,
                eval_every_steps=2, optimizer__decay_steps=8)
  train.train(tiny_config(total_steps=4, **common), workdir, ONE)
  assert _steps(workdir) == [4]
  # Rotated checkpoints take their checksum files with them.
  assert os.listdir(tmp_path / "checksums") == ["4.json"]
  # Resumed with a learning rate that blows up: step 5 is saved (finite,
  # never evaluated), step 6 is not finite.
  with pytest.raises(Diverged, match="at step 6") as error:
    train.train(tiny_config(total_steps=8, optimizer__learning_rate=1e30,
                            **common), workdir, ONE)
  assert _steps(workdir) == [4, 5]  # keep_checkpoints=1, yet 4 survives.
  # A rerun would resume from 5 and diverge again: the error names 4.
  assert str(error.value).endswith(
      "The newest checkpoint with a finite evaluation is step 4: add "
      "--resume_from 4 (and change what diverged, e.g. a lower learning "
      "rate) to resume from it; the later checkpoints are set aside.")
  train.train(tiny_config(total_steps=8, **common), workdir, ONE,
              resume_from=4)
  assert _steps(workdir) == [8] and os.listdir(tmp_path / "set_aside")
  assert [r["step"] for r in metric_writer.read_jsonl(workdir)
          if "train/loss" in r] == list(range(1, 9))


_KILLABLE = {**TINY, "total_steps": 60, "eval_every_steps": 60,
             "log_every_steps": 1, "optimizer.decay_steps": 60, "mesh.data": 1}
_TRAIN = [sys.executable, "-m", "bigmodel_jax.train", "--config",
          EXPERIMENT + ":cpu"]
_ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}


def _killable(workdir, **overrides) -> list[str]:
  """The 60-step tiny GPT's train command (log every step) for `workdir`."""
  return _TRAIN + ["--workdir", str(workdir)] + [
      f"--config.{k}={v}" for k, v in {**_KILLABLE, **overrides}.items()]


@pytest.fixture(scope="module")
def unbroken_losses(tmp_path_factory) -> dict:
  """{step: train/loss} of the 60-step run trained without a break."""
  whole = tmp_path_factory.mktemp("whole")
  subprocess.run(_killable(whole), check=True, env=_ENV, capture_output=True)
  return {r["step"]: r["train/loss"] for r in metric_writer.read_jsonl(
      str(whole)) if "train/loss" in r}


def _stop_at(command, step: int, *signals) -> subprocess.CompletedProcess:
  """Runs `command`, sends `signals` once it logs `step`; its outcome."""
  run = subprocess.Popen(command, env=_ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
  for line in run.stdout:
    if line.startswith(f"step {step}/60 "):
      for signum in signals:
        run.send_signal(signum)
      break
  out, err = run.communicate(timeout=300)
  return subprocess.CompletedProcess(command, run.returncode, out, err)


def _resumed_losses(workdir, command) -> list[tuple[int, float]]:
  subprocess.run(command, check=True, env=_ENV, capture_output=True)
  return [(r["step"], r["train/loss"]) for r in
          metric_writer.read_jsonl(str(workdir)) if "train/loss" in r]


@pytest.mark.slow
def test_kill_9_at_any_moment_resumes_as_an_unbroken_run(tmp_path,
                                                         unbroken_losses):
  broken = tmp_path / "broken"
  command = _killable(broken, checkpoint_every_steps=3)
  # Killed right after steps that start an async save (6, 21) and between
  # saves (35), each time resuming from what the last run left.
  for kill_at in (7, 22, 35):
    run = _stop_at(command, kill_at, signal.SIGKILL)
    assert run.returncode == -signal.SIGKILL  # It really was interrupted.
    assert _steps(broken)[-1] < 60
  got = _resumed_losses(broken, command)
  assert [step for step, _ in got] == list(range(1, 61))  # Once each.
  assert dict(got) == unbroken_losses  # Bitwise: the same floats.


@pytest.mark.slow
def test_sigterm_and_ctrl_c_save_the_step_in_flight_and_resume_unbroken(
    tmp_path, unbroken_losses):
  # No periodic checkpoint before the last step: without the signal
  # handling every interruption would lose all the steps done.
  broken = tmp_path / "broken"
  command = _killable(broken, checkpoint_every_steps=1000)
  saved = []
  for signum, at in ((signal.SIGTERM, 9), (signal.SIGINT, 30)):
    run = _stop_at(command, at, signum)
    name = signal.Signals(signum).name
    assert run.returncode == 75, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    saved.append(_steps(broken)[-1])
    assert at <= saved[-1] < 60
    assert run.stderr.splitlines()[-1] == (
        f"interrupted: {name} received: stopped after step {saved[-1]} and "
        f"saved checkpoint {saved[-1]} in {broken}/checkpoints. Run the same "
        "command to resume.")
  assert _steps(broken) == saved  # The second resumed from the first.
  got = _resumed_losses(broken, command)
  assert [step for step, _ in got] == list(range(1, 61))
  assert dict(got) == unbroken_losses


def test_a_second_signal_exits_at_once():
  script = ("import os, signal, time\n"
            "from bigmodel_jax import preemption\n"
            "with preemption.Watch() as stop:\n"
            "  assert not stop.requested(1)\n"
            "  os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
            "  assert stop.requested(2)\n"
            "  os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
            "print('not reached')\n")
  run = subprocess.run([sys.executable, "-c", script], capture_output=True,
                       text=True, env=_ENV, timeout=60)
  assert run.returncode == 128 + signal.SIGINT and not run.stdout
  assert run.stderr.splitlines() == [
      "SIGTERM: finishing the step in flight and saving a checkpoint (SIGTERM"
      " again exits at once).",
      "SIGINT again: exiting at once, without saving."]


@pytest.mark.parametrize("files", [
    {"config.json": '{"architectures": ["BertModel"]}', "tokenizer.json": "{}"},
    {"signature.json": "{}", "model.jaxexport": "x"},
])
def test_a_directory_that_is_not_a_run_is_never_trained_into(
    tmp_path, capsys, files):
  """`train --workdir EXPORTED` used to overwrite an exported model's
  config.json and tokenizer.json."""
  for name, text in files.items():
    (tmp_path / name).write_text(text)
  code, err = _main_error(capsys, train.main, [
      "--config", EXPERIMENT + ":cpu", "--workdir", str(tmp_path)])
  assert code == 2 and "not a training run" in err, err
  assert {p.name: p.read_text() for p in tmp_path.iterdir()} == files


def test_resuming_with_another_config_keeps_the_history(tmp_path,
                                                        tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=2), workdir, ONE)
  train.train(tiny_config(total_steps=4, optimizer__learning_rate=2e-3),
              workdir, ONE)
  train.train(tiny_config(total_steps=4, optimizer__learning_rate=2e-3),
              workdir, ONE)  # Nothing to do, nothing new to record.
  with open(tmp_path / "config_history.jsonl") as f:
    history = [json.loads(line) for line in f]
  assert [(h["from_step"], h["config"]["optimizer"]["learning_rate"])
          for h in history] == [(0, 1e-3), (2, 2e-3)]
  assert history[-1]["config"] == json.loads(
      (tmp_path / "config.json").read_text())
