"""Labelled text from local files: TFDS-style splits and classifier batches.

`input.path` (or, when it is None, the public dataset `input.dataset`
prepared on first use in the data home: "rt-polarity") is either
  - a folder with one file per class, one example per line (e.g. rt-polarity:
    rt-polarity.pos, rt-polarity.neg); a class is named by the part of the
    file name that differs (the extension when the stems agree, else the stem);
  - a .csv or .tsv file with a header row; `input.text_column` and
    `input.label_column` name the columns.

Splits are reproducible and stratified, fixed by `input.split_seed` (not the
run's seed): `test_fraction` of every class is "test"; of the rest,
`validation_fraction` is "validation" — or, with `num_folds` k, fold `fold`
of k is (k-fold cross-validation: run fold = 0 .. k-1, the test split stays
the same). `splits(config)["train"][i]` is {"text": str, "label": int}, like
a `tfds.data_source` record.

`input.groups` (a column, or a function of the record: `dataio/groups.py`)
adds each eval example's group to eval batches (per-group metrics);
`input.label_overrides` (a JSON file {example id: label}, e.g. from
`audit_labels import`) corrects labels. An example's id is its position in
the whole file or folder ("17"), the same for every split and fold.

Batches: texts become [CLS] ... [SEP] WordPiece ids padded to `seq_len`
(`input.vocab_file` of the pretrained model, or a vocabulary trained on the
training texts). Training draws shuffled epochs as a function of
(seed, step); evaluation covers a split once with zero-weight padding.
"""
import csv
import dataclasses
import os

import jax
import numpy as np

from bigmodel_jax.dataio import downloads, groups, label_overrides, wordpiece
from bigmodel_jax.dataio.common import (StepInput, eval_positions,
                                      save_class_names, shuffled_indices,
                                      token_units)
from bigmodel_jax.errors import ConfigError, NotFound

SPLITS = ("train", "validation", "test")


def batch_spec(config) -> dict:
  return {"inputs": jax.ShapeDtypeStruct((config.batch_size, config.seq_len),
                                         np.int32),
          "targets": jax.ShapeDtypeStruct((config.batch_size,), np.int32)}


units = token_units


@dataclasses.dataclass
class Split:
  """A random-access split: `split[i]` is {"text": str, "label": int}."""
  texts: list[str]
  labels: np.ndarray
  class_names: list[str]
  ids: np.ndarray  # Each example's position in the whole data.
  columns: dict  # Other column -> values, for `input.groups`.

  def __len__(self) -> int:
    return len(self.texts)

  def __getitem__(self, i: int) -> dict:
    return {"text": self.texts[i], "label": int(self.labels[i])}


def _read_folder(path: str, encoding: str) -> tuple[list, list]:
  files = sorted(f for f in os.listdir(path) if not f.startswith(".") and
                 os.path.isfile(os.path.join(path, f)))
  if len(files) < 2:
    raise ConfigError(f"{path} holds {len(files)} file(s); a class folder needs "
                     "one file per class (at least two).")
  stems = {os.path.splitext(f)[0] for f in files}
  names = [os.path.splitext(f)[1].lstrip(".") if len(stems) == 1
           else os.path.splitext(f)[0] for f in files]
  texts, labels = [], []
  for name, file in zip(names, files):
    with open(os.path.join(path, file), encoding=encoding) as f:
      examples = [line.strip() for line in f if line.strip()]
    texts += examples
    labels += [name] * len(examples)
  return texts, labels


def _read_table(path: str, encoding: str, text_column: str,
                label_column: str, group_column: str | None
                ) -> tuple[list, list, dict]:
  with open(path, encoding=encoding, newline="") as f:
    reader = csv.DictReader(f, delimiter="\t" if path.endswith(".tsv")
                            else ",")
    wanted = {text_column, label_column} | ({group_column} if group_column
                                            else set())
    missing = wanted - set(reader.fieldnames or ())
    if missing:
      raise ConfigError(f"{path} has no column(s) {sorted(missing)}; its "
                       f"columns are {reader.fieldnames}. Set "
                       "input.text_column / input.label_column / "
                       "input.groups.")
    rows = [r for r in reader if r[text_column] and r[text_column].strip()]
  columns = ({group_column: [r[group_column].strip() for r in rows]}
             if group_column else {})
  return ([r[text_column].strip() for r in rows],
          [r[label_column].strip() for r in rows], columns)


def read(path: str, *, encoding: str = "utf-8", text_column: str = "text",
         label_column: str = "label", group_column: str | None = None
         ) -> Split:
  """All examples of a class folder or a CSV/TSV file (with the values of
  `group_column`, a CSV/TSV column)."""
  if not os.path.exists(path):
    raise NotFound(f"No labelled text at {path!r} (input.path).")
  columns = {}
  try:
    if os.path.isdir(path):
      if group_column:
        raise ConfigError(f"input.groups={group_column!r} names a column, "
                          f"but {path} is a class folder; use a CSV/TSV "
                          "file or a function (FILE.py:NAME).")
      texts, names = _read_folder(path, encoding)
    elif path.endswith((".csv", ".tsv")):
      texts, names, columns = _read_table(path, encoding, text_column,
                                          label_column, group_column)
    else:
      raise ConfigError(f"{path} is neither a folder nor a .csv/.tsv file.")
  except UnicodeDecodeError as e:
    raise ConfigError(f"{path} is not {encoding} text ({e}); set "
                     "input.encoding, e.g. latin-1.") from e
  numeric = all(n.lstrip("-").isdigit() for n in names)
  class_names = sorted(set(names), key=int if numeric else str)
  index = {n: i for i, n in enumerate(class_names)}
  return Split(texts, np.array([index[n] for n in names], np.int32),
               class_names, np.arange(len(texts)), columns)


def split_indices(labels: np.ndarray, *, seed: int, test_fraction: float,
                  validation_fraction: float, num_folds: int | None = None,
                  fold: int = 0) -> dict:
  """Sorted example indices of "train", "validation" and "test", stratified."""
  if num_folds and not 0 <= fold < num_folds:
    raise ConfigError(f"input.fold={fold} is not in 0..{num_folds - 1}.")
  parts = {name: [] for name in SPLITS}
  for c in np.unique(labels):
    members = np.random.default_rng([seed, int(c)]).permutation(
        np.flatnonzero(labels == c))
    num_test = round(len(members) * test_fraction)
    parts["test"].append(members[:num_test])
    rest = members[num_test:]
    if num_folds:
      in_fold = np.arange(len(rest)) % num_folds == fold
    else:
      in_fold = np.arange(len(rest)) < round(len(members) *
                                             validation_fraction)
    parts["validation"].append(rest[in_fold])
    parts["train"].append(rest[~in_fold])
  return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}


def splits(config) -> dict:
  """{"train", "validation", "test"} `Split`s of `input.path`, or of the
  public dataset `input.dataset` (downloaded and unpacked on first use)."""
  path = config.path or downloads.unpacked(config.dataset)
  spec = config.get("groups")
  data = read(path, encoding=config.encoding,
              text_column=config.text_column, label_column=config.label_column,
              group_column=spec if spec and not groups.is_function(spec)
              else None)
  indices = split_indices(  # By the labels as read: corrections move no
      # example to another split.
      data.labels, seed=config.split_seed, test_fraction=config.test_fraction,
      validation_fraction=config.validation_fraction,
      num_folds=config.num_folds, fold=config.fold)
  if config.get("label_overrides"):
    data.labels = label_overrides.overridden(
        data.labels, [str(i) for i in data.ids],
        label_overrides.load(config.label_overrides, data.class_names))
  return {name: Split([data.texts[i] for i in idx], data.labels[idx],
                      data.class_names, data.ids[idx],
                      {k: [v[i] for i in idx] for k, v in data.columns.items()})
          for name, idx in indices.items()}


class Input(StepInput):

  def __init__(self, config, *, seed: int, process_index: int,
               process_count: int):
    super().__init__(config, seed=seed, process_index=process_index,
                     process_count=process_count)
    self.splits = splits(config)
    self.class_names = self.splits["train"].class_names
    self.tokenizer = wordpiece.for_input(config, self.splits["train"].texts,
                                         process_count)
    self._tokens = {
        name: self.tokenizer.encode_batch(split.texts, config.seq_len)
        for name, split in self.splits.items()}
    self._groups = {name: self._groups_of(split)
                    for name, split in self.splits.items()}

  def _groups_of(self, split: Split):
    spec = self.config.get("groups")
    if not spec:
      return None
    if groups.is_function(spec):
      return groups.Groups.of_records(spec, (split[i]
                                             for i in range(len(split))))
    return groups.Groups(split.columns[spec])

  def group_names(self, split: str | None = None) -> list[str] | None:
    groups_ = self._groups[self._eval_split(split)]
    return groups_.names if groups_ else None

  def example_ids(self, split: str | None = None) -> list[str]:
    """The ids of a split's examples, in eval order."""
    return [str(i) for i in self.splits[self._eval_split(split)].ids]

  def model_fields(self) -> dict:
    return {"num_classes": len(self.class_names),
            "vocab_size": self.tokenizer.vocab_size}

  def _batch(self, split: str, indices) -> dict:
    return {"inputs": self._tokens[split][indices],
            "targets": self.splits[split].labels[indices]}

  def train_batch(self, step: int) -> dict:
    indices = shuffled_indices(len(self.splits["train"]),
                               self.config.batch_size, self.seed, step)
    return self._batch("train", indices[self._rows])

  def train_size(self) -> int:
    return len(self.splits["train"])

  def train_examples(self, indices: np.ndarray, step: int) -> dict:
    del step
    return self._batch("train", indices)

  def train_labels(self) -> np.ndarray:
    return self.splits["train"].labels

  def _eval_split(self, split: str | None) -> str:
    split = split or self.config.eval_split
    if split not in SPLITS or not len(self.splits[split]):
      raise ConfigError(f"No examples in split {split!r}; splits have "
                       f"{ {k: len(v) for k, v in self.splits.items()} }.")
    return split

  def num_eval_batches(self, split: str | None = None) -> int:
    return -(-len(self.splits[self._eval_split(split)]) //
             self.config.batch_size)

  def eval_batches(self, split: str | None = None):
    """A split (default `input.eval_split`) once, in order."""
    split = self._eval_split(split)
    for indices, weights in eval_positions(len(self.splits[split]),
                                           self.config.batch_size, self._rows):
      batch = {**self._batch(split, indices), "weights": weights}
      if self._groups[split]:
        batch["groups"] = self._groups[split].masks(indices, weights)
      yield batch

  def save(self, workdir: str) -> None:
    self.tokenizer.save(os.path.join(workdir, "tokenizer.json"))
    save_class_names(workdir, self.class_names)


load_tokenizer = wordpiece.load
