"""Public files a dataset is prepared from: downloaded once, verified, cached.

  path = downloads.fetch("tiny_shakespeare")  # DATA_HOME/tinyshakespeare/input.txt
  folder = downloads.unpacked("rt-polarity")  # DATA_HOME/rt-polarity/

Each source lists its public URLs (tried in order), size and sha256. A
download shows progress, goes to a temporary file and is renamed only once
its checksum matches, so an interrupted or wrong download never leaves a
file that looks complete. `BIGMODEL_JAX_DATA_MIRROR` (a base URL) replaces
every source's host and directory, e.g. a local server for tests or an
internal mirror. Without network, the error names the file to place where.
DATA_HOME is `$BIGMODEL_JAX_DATA`, or ~/.cache/bigmodel_jax.
"""
import dataclasses
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request

from bigmodel_jax.errors import NotFound


@dataclasses.dataclass(frozen=True)
class Source:
  folder: str  # Under DATA_HOME.
  urls: tuple[str, ...]
  size: int
  sha256: str

  @property
  def filename(self) -> str:
    return self.urls[0].rsplit("/", 1)[-1]


SOURCES = {
    # TFDS's own source and checksum (datasets/tiny_shakespeare/checksums.tsv).
    "tiny_shakespeare": Source(
        "tinyshakespeare",
        ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/"
         "tinyshakespeare/input.txt",),
        1_115_394,
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
    # Pang & Lee's sentence polarity dataset v1.0 (the checksum Hugging Face
    # records for it).
    "rt-polarity": Source(
        "downloads",
        ("https://www.cs.cornell.edu/people/pabo/movie-review-data/"
         "rt-polaritydata.tar.gz",
         "https://storage.googleapis.com/seldon-datasets/sentence_polarity_v1/"
         "rt-polaritydata.tar.gz"),
        487_770,
        "a05befe52aafda71d458d188a1c54506a998b1308613ba76bbda2e5029409ce9"),
}


def data_home() -> str:
  return os.path.expanduser(os.environ.get("BIGMODEL_JAX_DATA") or
                            "~/.cache/bigmodel_jax")


def _urls(source: Source) -> list[str]:
  mirror = os.environ.get("BIGMODEL_JAX_DATA_MIRROR")
  if mirror:
    return [mirror.rstrip("/") + "/" + source.filename]
  return list(source.urls)


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _download(url: str, path: str, size: int) -> None:
  """Streams `url` into `path`, printing progress about once a second."""
  began = last = time.perf_counter()
  done = 0
  with urllib.request.urlopen(url, timeout=30) as response, \
      open(path, "wb") as out:
    while block := response.read(1 << 16):
      out.write(block)
      done += len(block)
      now = time.perf_counter()
      if now - last >= 1.0:
        last = now
        rate = done / (now - began)
        print(f"downloading {url}: {done / 2**20:.1f} of {size / 2**20:.1f} "
              f"MiB, {rate / 2**20:.1f} MiB/s", file=sys.stderr, flush=True)
  if done < size:  # The server closed the connection early.
    raise urllib.error.URLError(f"the connection closed after {done} of "
                                f"{size} bytes")


def fetch(name: str) -> str:
  """The verified local copy of source `name`, downloaded if missing."""
  source = SOURCES[name]
  directory = os.path.join(data_home(), source.folder)
  path = os.path.join(directory, source.filename)
  if os.path.exists(path) and sha256(path) == source.sha256:
    return path
  os.makedirs(directory, exist_ok=True)
  partial = f"{path}.part-{os.getpid()}"
  errors = []
  for url in _urls(source):
    print(f"downloading {url} ({source.size / 2**20:.1f} MiB) for {name}",
          file=sys.stderr, flush=True)
    try:
      _download(url, partial, source.size)
      got = sha256(partial)
      if got == source.sha256:
        os.replace(partial, path)
        return path
      errors.append(f"{url}: checksum mismatch (sha256 {got}, expected "
                    f"{source.sha256}); the file was discarded")
    except (OSError, http.client.HTTPException) as e:  # URLError is one.
      errors.append(f"{url}: {getattr(e, 'reason', e)}")
    finally:
      if os.path.exists(partial):
        os.remove(partial)
  raise NotFound(
      f"Could not download {source.filename} for {name} ("
      + "; ".join(errors) + f"). Without network, place that file "
      f"(sha256 {source.sha256}, {source.size:,} bytes, from "
      f"{source.urls[0]}) at {path} and run again.")


# Archives unpacked into DATA_HOME/NAME/: member -> file name there. The
# members are Windows-1252 text; they are written as UTF-8.
ARCHIVES = {
    "rt-polarity": {"rt-polaritydata/rt-polarity.pos": "rt-polarity.pos",
                    "rt-polaritydata/rt-polarity.neg": "rt-polarity.neg"},
}


def unpacked(name: str) -> str:
  """DATA_HOME/NAME with the archive's files, unpacked on first use."""
  folder = os.path.join(data_home(), name)
  if os.path.isdir(folder):
    return folder
  archive = fetch(name)
  print(f"unpacking {archive} into {folder}", file=sys.stderr, flush=True)
  partial = f"{folder}.incomplete-{os.getpid()}"
  os.makedirs(partial)
  try:
    with tarfile.open(archive) as tar:
      for member, target in ARCHIVES[name].items():
        text = tar.extractfile(member).read().decode("cp1252")
        with open(os.path.join(partial, target), "w", encoding="utf-8") as f:
          f.write(text)
    os.rename(partial, folder)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
  return folder
