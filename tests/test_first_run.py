"""First run on a fresh machine: datasets prepared on first use from their
public files, here served by a local server from ../shared/data."""
import io
import os
import pathlib
import shutil
import tarfile

import pytest

from bigmodel_jax import config_loader
from bigmodel_jax.data import text_classification
from bigmodel_jax.dataio import downloads, tfds_source
from bigmodel_jax.errors import NotFound

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TEXT = SHARED / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def fresh(tmp_path, monkeypatch):
  """An empty data home and TFDS data dir, as on a fresh machine."""
  home, tfds_dir = tmp_path / "home", tmp_path / "tfds"
  monkeypatch.setenv("BIGMODEL_JAX_DATA", str(home))
  return home, str(tfds_dir)


def test_tiny_shakespeare_is_prepared_on_first_use_as_tfds_would(
    server, fresh, monkeypatch, capsys):
  url, folder = server
  shutil.copy(TEXT, folder / "input.txt")
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", url)
  home, tfds_dir = fresh
  for split in ("train", "validation", "test"):
    assert tfds_source.load_text("tiny_shakespeare", split, tfds_dir) == (
        tfds_source.load_text("tiny_shakespeare", split,
                              str(SHARED / "tensorflow_datasets")))
  err = capsys.readouterr().err
  assert f"downloading {url}/input.txt (1.1 MiB) for tiny_shakespeare" in err
  assert "preparing tiny_shakespeare 1.0.0 in" in err
  assert (home / "tinyshakespeare" / "input.txt").read_bytes() == (
      TEXT.read_bytes())
  assert sorted(os.listdir(pathlib.Path(tfds_dir) / "tiny_shakespeare")) == [
      "1.0.0"]


def test_a_file_with_the_wrong_checksum_is_discarded(server, fresh,
                                                     monkeypatch):
  url, folder = server
  (folder / "input.txt").write_bytes(TEXT.read_bytes() + b"!")
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", url)
  home, tfds_dir = fresh
  with pytest.raises(NotFound, match=r"input.txt: checksum mismatch \(sha256 "
                     r"\w+, expected 86c4e6aa.*\); the file was discarded"):
    tfds_source.source("tiny_shakespeare", "train", tfds_dir)
  assert os.listdir(home / "tinyshakespeare") == []
  assert not os.path.exists(tfds_dir)


def test_an_interrupted_download_leaves_nothing_and_a_rerun_completes(
    server, fresh, monkeypatch):
  url, folder = server
  shutil.copy(TEXT, folder / "input.txt")
  home, tfds_dir = fresh
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", url + "/cut")
  with pytest.raises(NotFound, match="Could not download input.txt"):
    tfds_source.source("tiny_shakespeare", "train", tfds_dir)
  assert os.listdir(home / "tinyshakespeare") == []
  assert not os.path.exists(tfds_dir)
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", url)
  assert len(tfds_source.source("tiny_shakespeare", "train", tfds_dir)) == 1


def test_offline_says_which_file_to_place_where(fresh, monkeypatch):
  home, tfds_dir = fresh
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", "http://127.0.0.1:9")
  target = home / "tinyshakespeare" / "input.txt"
  with pytest.raises(NotFound, match=(
      r"Without network, place that file \(sha256 86c4e6aa\w+, 1,115,394 "
      r"bytes, from https://raw.githubusercontent.com/karpathy/char-rnn/"
      rf"master/data/tinyshakespeare/input.txt\) at {target} and run again")):
    tfds_source.source("tiny_shakespeare", "validation", tfds_dir)
  shutil.copy(TEXT, target)  # Placed by hand: no network needed.
  assert len(tfds_source.source("tiny_shakespeare", "validation",
                                tfds_dir)) == 1


def test_rt_polarity_is_unpacked_on_first_use(server, fresh, monkeypatch):
  url, folder = server
  archive = io.BytesIO()
  with tarfile.open(fileobj=archive, mode="w:gz") as tar:
    for name in ("rt-polarity.pos", "rt-polarity.neg"):
      data = (SHARED / "data" / "rt-polarity" / name).read_text(
          "utf-8").encode("cp1252")  # As the public archive has them.
      info = tarfile.TarInfo(f"rt-polaritydata/{name}")
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  (folder / "rt-polaritydata.tar.gz").write_bytes(archive.getvalue())
  # This archive is built here, so its checksum is not the public one's.
  monkeypatch.setitem(downloads.SOURCES, "rt-polarity", downloads.Source(
      "downloads", downloads.SOURCES["rt-polarity"].urls,
      len(archive.getvalue()),
      downloads.sha256(str(folder / "rt-polaritydata.tar.gz"))))
  monkeypatch.setenv("BIGMODEL_JAX_DATA_MIRROR", url)
  home, _ = fresh
  config = config_loader.load(str(ROOT / "experiments" / "bert_finetune.py"))
  assert config.input.path is None and config.input.dataset == "rt-polarity"
  splits = text_classification.splits(config.input)
  assert sum(len(s) for s in splits.values()) == 10_662
  for name in ("rt-polarity.pos", "rt-polarity.neg"):
    assert (home / "rt-polarity" / name).read_bytes() == (
        SHARED / "data" / "rt-polarity" / name).read_bytes()
