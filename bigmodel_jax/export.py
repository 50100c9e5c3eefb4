"""Turns a run into a Hugging Face model directory or a jax.export artifact.

  python -m bigmodel_jax.export --workdir runs/minilm_full --format hf \\
      --out exported/minilm_sentiment
  python -m bigmodel_jax.export --workdir runs/vit --format jax --out exported/vit

--format hf: config.json (architectures, label names), model.safetensors,
the run's tokenizer and a README.md model card with the run's config and
metrics, laid out by the model family's `export_hf` (LoRA merged). Where
transformers has no faithful equivalent of a setting, the export refuses in
one line naming it, or writes a layout that reproduces it (mean-pooled BERT
classifiers: sentence-transformers modules).

--format word2vec: the word vectors of a run that has them (word2vec) in
word2vec's text and binary formats, which gensim, fastText and most tools
read.

--format jax: the inference function serialized with `jax.export`
(StableHLO, any batch size, for CPU and CUDA) with its variables and a
loader, load.py, that needs only jax and numpy.

Every export is verified as it is written: the directory is loaded back (by
transformers / sentence-transformers, or by load.py) and its outputs on
examples of the run's own evaluation data compared with the run's; a
difference above --tolerance (relative to the outputs' scale) is an error
and nothing is kept. The run itself is only read.
"""
import json
import os
import shutil
import sys

import jax
import numpy as np

from bigmodel_jax import (capabilities, evaluate, jax_loader, metric_writer,
                          quantization, runs, workdirs)
from bigmodel_jax.errors import (ConfigError, ExportMismatch, NotExportable,
                                 entrypoint)


# --- The run's outputs on its own data -------------------------------------
def example_batch(run, num_examples: int) -> dict:
  """The first `num_examples` real examples of the run's evaluation data."""
  data = evaluate.run_input(run, process_index=0, process_count=1)
  batch = {k: np.asarray(v) for k, v in next(iter(data.eval_batches())).items()}
  weights = batch.get("weights")
  real = (weights.reshape(len(weights), -1).any(1) if weights is not None
          else slice(None))  # Not the padding rows.
  return {k: v[real][:num_examples] for k, v in batch.items()}


def run_outputs(run, batch: dict):
  """The run's model outputs on a batch, as its task computes them."""
  return jax.device_get(run.task.apply(run.model, run.variables, batch))


def compare(ours: dict, theirs: dict, tolerance: float) -> dict:
  """{name: max abs difference}; raises ExportMismatch above tolerance."""
  diffs = {}
  for name in ours:
    a = np.asarray(ours[name], np.float64)
    b = np.asarray(theirs[name], np.float64)
    diffs[name] = float(np.abs(a - b).max())
    if diffs[name] > tolerance * max(1.0, float(np.abs(a).max())):
      raise ExportMismatch(
          f"The exported model's {name} differ from the run's by up to "
          f"{diffs[name]:.3g} (tolerance {tolerance:g} x scale); nothing was "
          "kept.")
  return diffs


# --- Formats ------------------------------------------------------------------
def _write_json(path: str, value) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def _write_tensors(path: str, tensors: dict) -> None:
  from safetensors.numpy import save_file
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_file({k: np.array(v, order="C") for k, v in tensors.items()}, path,
            metadata={"format": "pt"})


def write_hf(run, out: str, batch: dict) -> tuple[str, dict]:
  """Writes the Hugging Face directory; (usage, outputs to compare)."""
  if run.family.export_hf is None:
    raise NotExportable(
        f"Model family {run.config.model.name!r} has no Hugging Face export "
        "(export_hf); --format jax exports any model.")
  method = (run.config.get("compression") or {}).get("method")
  if method in quantization.METHODS:
    raise NotExportable(
        f"{run.workdir} holds {method} weights, which Hugging Face layouts "
        "do not; export the float run (or --format jax, which keeps them).")
  hf = run.family.export_hf(jax.device_get(run.variables), run.config.model,
                            _class_names(run))
  _write_tensors(os.path.join(out, "model.safetensors"), hf.tensors)
  _write_json(os.path.join(out, "config.json"), hf.config)
  for name, value in hf.files.items():
    if isinstance(value, dict) and all(isinstance(v, np.ndarray)
                                       for v in value.values()):
      _write_tensors(os.path.join(out, name), value)
    else:
      _write_json(os.path.join(out, name), value)
  if hf.tokenizer_config is not None and run.tokenizer is not None:
    run.tokenizer.to_hf().save(os.path.join(out, "tokenizer.json"))
    specials = getattr(run.tokenizer, "hf_special_tokens", dict)()
    _write_json(os.path.join(out, "tokenizer_config.json"),
                {**hf.tokenizer_config, **specials})
  try:
    theirs = hf.reference(out, batch)
  except ImportError as e:
    print(f"note: not verified ({e.name} is not installed).")
    theirs = None
  except Exception as e:  # The reference library refused the directory.
    raise ExportMismatch(f"The exported directory does not load: "
                         f"{type(e).__name__}: {str(e).splitlines()[0]}; "
                         "nothing was kept.") from e
  return hf.usage, (hf.outputs(run_outputs(run, batch)), theirs)


def _class_names(run) -> list | None:
  path = os.path.join(run.workdir, "class_names.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_jax(run, out: str, batch: dict) -> tuple[str, dict]:
  """Writes the jax.export artifact: the model called as its task declares
  (`model_args`: every argument, None ones left out); (usage, outputs to
  compare)."""
  variables = jax.device_get(run.variables)
  leaves, treedef = jax.tree.flatten(variables)
  call = run.task.model_args(batch)
  given = [i for i, a in enumerate(call) if a is not None]
  args = [np.asarray(call[i]) for i in given]
  model = run.model

  def infer(leaves, *inputs):
    full = [None] * len(call)
    for i, value in zip(given, inputs):
      full[i] = value
    return model.apply(jax.tree.unflatten(treedef, leaves), *full)

  (size,) = jax.export.symbolic_shape("batch")
  exported = jax.export.export(jax.jit(infer), platforms=("cpu", "cuda"))(
      [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves],
      *[jax.ShapeDtypeStruct((size, *a.shape[1:]), a.dtype) for a in args])
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "model.jaxexport"), "wb") as f:
    f.write(exported.serialize())
  np.savez(os.path.join(out, "variables.npz"),
           **{str(i): np.asarray(x) for i, x in enumerate(leaves)})
  _write_json(os.path.join(out, "signature.json"), {
      "inputs": [{"shape": [None, *a.shape[1:]], "dtype": str(a.dtype)}
                 for a in args],
      "outputs": jax.tree.map(lambda s: {"shape": [None, *s.shape[1:]],
                                         "dtype": str(s.dtype)},
                              jax.eval_shape(infer, leaves, *args)),
      "class_names": _class_names(run), "platforms": list(exported.platforms)})
  shutil.copy(jax_loader.__file__, os.path.join(out, "load.py"))
  ours = _named(run_outputs(run, batch))
  theirs = _named(jax_loader.load(out)(*args))
  usage = ("import load  # load.py in this directory\n"
           "model = load.load(DIR)\n"
           "outputs = model(*inputs)  # as signature.json lists them")
  return usage, (ours, theirs)


def _named(outputs) -> dict:
  return outputs if isinstance(outputs, dict) else {"outputs": outputs}


def write_word2vec(run, out: str, batch: dict) -> tuple[str, dict]:
  """Writes vectors.txt and vectors.bin, word2vec's text and binary formats
  (a "count dim" line, then each word, most frequent first, with its raw
  vector), read back with gensim; (usage, the example words' vectors)."""
  capabilities.require(run.parts, "word_vectors", run.workdir)
  ids = run.tokenizer.word_ids()
  words = [run.tokenizer.words[i] for i in ids]
  vectors = np.asarray(run.model.apply(run.variables, ids, method="vectors"),
                       np.float32)
  header = f"{len(words)} {vectors.shape[1]}\n"
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "vectors.txt"), "w", encoding="utf-8") as f:
    f.write(header)
    f.writelines(f"{w} {' '.join(f'{x:.9g}' for x in v)}\n"
                 for w, v in zip(words, vectors))
  with open(os.path.join(out, "vectors.bin"), "wb") as f:
    f.write(header.encode())
    f.writelines(f"{w} ".encode() + v.astype("<f4").tobytes() + b"\n"
                 for w, v in zip(words, vectors))
  known = set(ids.tolist())
  shown = [i for i in np.unique(batch["inputs"]) if i in known]
  names = [run.tokenizer.words[i] for i in shown]
  ours = dict.fromkeys(("vectors.txt", "vectors.bin"),
                       vectors[np.asarray(shown, np.int64) - ids[0]])
  usage = ("from gensim.models import KeyedVectors\n"
           "vectors = KeyedVectors.load_word2vec_format(\n"
           "    f\"{DIR}/vectors.bin\", binary=True)  # or vectors.txt\n"
           "vectors.most_similar(\"king\")")
  try:
    from gensim.models import KeyedVectors
  except ImportError as e:
    print(f"note: not verified ({e.name} is not installed).")
    return usage, (ours, None)
  theirs = {name: KeyedVectors.load_word2vec_format(
      os.path.join(out, name), binary=name.endswith(".bin"))[names]
            for name in ours}
  return usage, (ours, theirs)


FORMATS = {"hf": write_hf, "jax": write_jax, "word2vec": write_word2vec}


# --- Model card ---------------------------------------------------------------
def model_card(run, fmt: str, usage: str, verified: str) -> str:
  latest = {}  # A compressed run has none: `evaluate` scores it.
  has_metrics = os.path.exists(os.path.join(run.workdir, "metrics.jsonl"))
  for record in metric_writer.read_jsonl(run.workdir) if has_metrics else []:
    latest.update({k: v for k, v in record.items()
                   if k.startswith(("val/", "test/")) and
                   isinstance(v, (int, float))})
  metrics = "\n".join(f"| {k} | {v:.6g} |" for k, v in sorted(latest.items()))
  with open(os.path.join(run.workdir, "config.json")) as f:
    config = f.read()
  return f"""# {os.path.basename(os.path.abspath(run.workdir))}

Exported by `python -m bigmodel_jax.export --format {fmt}` from the
bigmodel_jax run `{run.workdir}` at step {run.step} (model
`{run.config.model.name}`, task `{run.config.task.name}`, input
`{run.config.input.name}`).

## Use

```python
{usage.replace("DIR", repr("."))}
```

## Verified

{verified}

## Metrics of the run

| metric | value |
|---|---|
{metrics or "| (none recorded) | |"}

## Training config

```json
{config.strip()}
```
"""


# --- Command ------------------------------------------------------------------
@entrypoint
def main(argv=None) -> None:
  parser = runs.arg_parser(__doc__)
  parser.add_argument("--format", choices=sorted(FORMATS), default="hf")
  parser.add_argument("--examples", type=int, default=8,
                      help="evaluation examples to verify on")
  parser.add_argument("--tolerance", type=float, default=1e-4,
                      help="largest difference allowed, times the scale")
  args = parser.parse_args(argv)
  if args.examples < 1:
    raise ConfigError(f"--examples={args.examples}: it must be >= 1.")

  with workdirs.new_directory(args.out) as staging:
    run = runs.load(args.workdir, args.step, devices=jax.devices()[:1])
    batch = example_batch(run, args.examples)
    usage, (ours, theirs) = FORMATS[args.format](run, staging, batch)
    if theirs is None:
      verified = "Not verified: the reference library was not installed."
    else:
      diffs = compare(ours, theirs, args.tolerance)
      verified = (f"Reloaded and run on {len(next(iter(batch.values())))} evaluation "
                  "examples of the run: max |difference| " + ", ".join(
                      f"{k} {v:.2g}" for k, v in diffs.items()) + ".")
    with open(os.path.join(staging, "README.md"), "w") as f:
      f.write(model_card(run, args.format, usage, verified))
  print(f"exported {args.workdir} (step {run.step}) as {args.format} to "
        f"{args.out}\n{verified}")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
