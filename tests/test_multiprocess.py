"""Two processes on localhost (gloo collectives) train like one process."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from bigmodel_jax import metric_writer
from conftest import EXPERIMENT, TINY


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _train_command(workdir):
  return [sys.executable, "-m", "bigmodel_jax.train", "--config",
          EXPERIMENT + ":cpu", "--workdir", str(workdir),
          "--config.model.dropout=0.1"] + [
              f"--config.{k}={v}" for k, v in TINY.items()]


def _env(devices: int, **extra):
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  env.update(extra)
  return env


@pytest.mark.slow
def test_two_processes_agree_with_one(tmp_path):
  one = subprocess.run(_train_command(tmp_path / "one"), env=_env(2),
                       capture_output=True, text=True, timeout=300)
  assert one.returncode == 0, one.stderr[-3000:]
  port = _free_port()
  procs = [subprocess.Popen(
      _train_command(tmp_path / "two"), stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True,
      env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n".join(
      log[-3000:] for log in logs)
  assert "2 process(es)" in logs[0] and "step 6/6" not in logs[1]
  expected = metric_writer.read_jsonl(str(tmp_path / "one"))
  got = metric_writer.read_jsonl(str(tmp_path / "two"))
  for key in ("train/loss", "val/loss"):
    want = [r[key] for r in expected if key in r]
    have = [r[key] for r in got if key in r]
    assert len(have) == len(want) > 0
    assert have == pytest.approx(want, rel=1e-5)
  assert sorted(os.listdir(tmp_path / "two" / "checkpoints")) == [
      "2", "4", "6"]


@pytest.mark.slow
def test_a_sigterm_to_one_process_saves_the_same_step_on_both(tmp_path):
  port = _free_port()
  command = _train_command(tmp_path / "two") + [
      "--config.total_steps=2000", "--config.checkpoint_every_steps=5000",
      "--config.eval_every_steps=5000"]
  procs = [subprocess.Popen(
      command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
      env=_env(1, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)))
           for i in range(2)]
  for line in procs[0].stdout:  # Process 0 logs; process 1 is preempted.
    if line.startswith("step 5/2000 "):
      procs[1].send_signal(signal.SIGTERM)
      break
  logs = [p.communicate(timeout=300)[0] for p in procs]
  assert [p.returncode for p in procs] == [75, 75], "\n".join(
      log[-3000:] for log in logs)
  saved = os.listdir(tmp_path / "two" / "checkpoints")
  assert len(saved) == 1 and 5 <= int(saved[0]) < 2000
  for log in logs:
    assert (f"stopped after step {saved[0]} and saved checkpoint {saved[0]}"
            in log)
