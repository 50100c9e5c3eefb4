"""Every shell command in the README works on a fresh machine: a new virtual
environment made by `pip install -e .` alone, an empty data home and TFDS
data dir, datasets downloaded on first use (from a local server holding
the real files), tiny step counts where a command trains."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TINY = ["--config.total_steps=4", "--config.log_every_steps=2",
        "--config.eval_every_steps=4", "--config.checkpoint_every_steps=4"]


def readme_commands() -> list[str]:
  """The commands of the README's bash blocks, continuation lines joined,
  except the install (done first) and the test command itself."""
  text = (ROOT / "README.md").read_text()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for command in block.replace("\\\n", " ").splitlines():
      command = re.sub(r"\s+#.*$", "", command).strip()
      if command and not command.startswith(("pip install", "#")):
        commands.append(" ".join(command.split()))
  return commands


def test_the_readme_has_the_first_run_commands():
  commands = readme_commands()
  assert any("bigmodel_jax.train --config experiments/gpt_shakespeare_char.py"
             ":cpu" in c for c in commands)
  assert any("bigmodel_jax.sample" in c for c in commands)


@pytest.mark.slow
def test_every_readme_command_works_after_pip_install_alone(tmp_path, server):
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  install = subprocess.run(
      [str(venv / "bin" / "pip"), "install", "-q", "-e", str(ROOT)],
      capture_output=True, text=True, timeout=1500)
  assert install.returncode == 0, install.stderr[-3000:]

  url, served = server
  shutil.copy(SHARED / "data" / "tinyshakespeare" / "input.txt", served)
  work = tmp_path / "work"  # The README's relative paths resolve here.
  work.mkdir()
  for name in ("experiments", "scripts"):
    (work / name).symlink_to(ROOT / name)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("XLA_", "JAX_", "TFDS_", "BIGMODEL_JAX_",
                              "PYTHON"))}
  env.update(PATH=f"{venv / 'bin'}:{env['PATH']}", HOME=str(tmp_path / "home"),
             BIGMODEL_JAX_DATA_MIRROR=url)
  for command in readme_commands():
    if "bigmodel_jax.train" in command:
      command += " " + " ".join(TINY)
    run = subprocess.run(["bash", "-c", command], cwd=work, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, (command, run.stdout[-2000:],
                                 run.stderr[-3000:])
  assert (tmp_path / "home" / "tensorflow_datasets" / "tiny_shakespeare" /
          "1.0.0").is_dir()
