"""Explains a trained run's predictions, as pictures and a page.

  python -m bigmodel_jax.explain --workdir runs/minilm --out expl \\
      --input "a gripping, beautifully acted film" --input "dull and long"
  python -m bigmodel_jax.explain --workdir runs/vit_digits --out expl \\
      --split test --examples 8          # or --input digit.png
  python -m bigmodel_jax.explain --workdir runs/shakespeare --out expl \\
      --input "ROMEO: But soft, what light"

What the run can do decides what is drawn (`attribution.py`; a run that can
do none of it is refused in one line):
  text classifiers    integrated gradients and gradient x input per token,
                      as coloured text (red: for the class, blue: against);
                      attention of the last layer and its rollout (PNG)
  image classifiers   the same per pixel, as heatmaps beside the image;
                      attention rollout over patches for ViT
  language models     the logit lens: each layer's likeliest next token at
                      every position (PNG) and the attention rollout
OUT/index.html shows everything; OUT/attributions.json holds the numbers,
with each example's completeness check (integrated gradients' sum against
logit - baseline logit). The class explained is the predicted one, or
--target NAME.
"""
import argparse
import html
import json
import os

import numpy as np

from bigmodel_jax import attribution, evaluate, runs, workdirs
from bigmodel_jax.dataio import image_ops
from bigmodel_jax.errors import ConfigError, NotFound, entrypoint


# --- Inputs ------------------------------------------------------------------
def split_batch(run, split: str, count: int) -> dict:
  """The first `count` examples of a split, as one batch."""
  rows = {}
  for batch in evaluate.run_input(run).eval_batches(split):
    real = np.flatnonzero(np.asarray(batch["weights"]) > 0)
    for key, value in batch.items():
      if key not in ("weights", "groups"):
        rows.setdefault(key, []).append(np.asarray(value)[real])
    if sum(map(len, rows["inputs"])) >= count:
      break
  if not rows:
    raise NotFound(f"Split {split!r} has no examples.")
  return {k: np.concatenate(v)[:count] for k, v in rows.items()}


def given_batch(run, inputs: list[str]) -> dict:
  """Texts (or image files, for image runs) as the run's model input."""
  if "text" in run.parts and "classify" in run.parts:
    return {"inputs": np.asarray(run.tokenizer.encode_batch(
        inputs, run.config.input.seq_len), np.int32)}
  if "text" in run.parts:  # A language model: prompts, right-padded.
    encoded = [np.asarray(run.tokenizer.encode(t), np.int32) for t in inputs]
    if not all(map(len, encoded)):
      raise ConfigError("An --input text is empty.")
    length = max(map(len, encoded))
    return {"inputs": np.stack([np.pad(e, (0, length - len(e)))
                                for e in encoded]),
            "lengths": np.array([len(e) for e in encoded])}
  pp = image_ops.parse(run.config.input.eval_pp)
  images = []
  for path in inputs:
    try:
      with open(path, "rb") as f:
        images.append(pp(image_ops.decoded(f.read(),
                                           run.config.input.channels),
                         np.random.default_rng(0)))
    except (OSError, ValueError) as e:
      raise NotFound(f"--input {path}: {e}") from None
  return {"inputs": np.stack(images).astype(np.float32)}


# --- Drawing -----------------------------------------------------------------
def _plt():
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  return plt


def token_html(pieces: list[str], scores: np.ndarray) -> str:
  """Tokens on backgrounds red (for) / blue (against), by |score|."""
  top = float(np.abs(scores).max()) or 1.0
  spans = []
  for piece, score in zip(pieces, scores):
    alpha = abs(float(score)) / top
    color = "220,40,40" if score > 0 else "40,90,220"
    spans.append(f'<span title="{score:+.4f}" style="background:rgba('
                 f'{color},{alpha:.2f})">{html.escape(piece)}</span>')
  return " ".join(spans)


def image_figure(path: str, image, maps: dict) -> None:
  """The image and one heatmap per named map, side by side."""
  plt = _plt()
  fig, axes = plt.subplots(1, 1 + len(maps), figsize=(2.4 * (1 + len(maps)),
                                                        2.6))
  shown = image[..., 0] if image.shape[-1] == 1 else (
      (image - image.min()) / max(float(np.ptp(image)), 1e-8))
  axes[0].imshow(shown, cmap="gray")
  axes[0].set_title("input")
  for ax, (name, values) in zip(axes[1:], maps.items()):
    limit = float(np.abs(values).max()) or 1.0
    ax.imshow(shown, cmap="gray", alpha=0.35)
    ax.imshow(values, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.75)
    ax.set_title(name, fontsize=9)
  for ax in axes:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def matrix_figure(path: str, matrices: dict, labels: list[str]) -> None:
  """Square maps (attention, rollout) with token labels."""
  plt = _plt()
  size = max(3.0, 0.28 * len(labels))
  fig, axes = plt.subplots(1, len(matrices), figsize=(size * len(matrices),
                                                      size))
  for ax, (name, m) in zip(np.atleast_1d(axes), matrices.items()):
    ax.imshow(m, cmap="viridis")
    ax.set_title(name, fontsize=9)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def lens_figure(path: str, probs: np.ndarray, words: list, pieces: list
                ) -> None:
  """Layers x positions: the likeliest next token and its probability."""
  plt = _plt()
  layers, length = probs.shape
  fig, ax = plt.subplots(figsize=(max(4, 0.7 * length), max(2, 0.45 *
                                                              layers)))
  ax.imshow(probs, cmap="Blues", vmin=0, vmax=1, aspect="auto")
  for i in range(layers):
    for j in range(length):
      ax.text(j, i, words[i][j], ha="center", va="center", fontsize=7,
              color="black" if probs[i, j] < 0.6 else "white")
  ax.set_xticks(range(length), pieces, rotation=90, fontsize=7)
  ax.set_yticks(range(layers), [f"layer {i + 1}" for i in range(layers)],
                fontsize=7)
  ax.set_title("logit lens: likeliest next token per layer", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# --- Explaining --------------------------------------------------------------
def _pieces(run, ids) -> list[str]:
  vocab = run.tokenizer.to_hf()
  return [vocab.id_to_token(int(i)) or "?" for i in ids]


def _special(run, batch: dict) -> np.ndarray:
  """Where the inputs hold the tokenizer's special tokens ([CLS], [SEP],
  padding): integrated gradients keep them in the baseline."""
  added = run.tokenizer.to_hf().get_added_tokens_decoder()
  return np.isin(batch["inputs"], [i for i, t in added.items()
                                   if t.special])


def _visible(piece: str) -> str:
  """Spaces and line ends drawn, so a picture shows them."""
  return piece.replace(" ", "␣").replace("\n", "⏎") or "∅"


def _target(run, logits: np.ndarray, name: str | None, classes) -> np.ndarray:
  if name is None:
    return logits.argmax(-1)
  if name not in classes:
    raise ConfigError(f"--target {name!r} is not a class; classes are "
                      f"{classes}.")
  return np.full(len(logits), classes.index(name))


def classifier(run, batch: dict, out: str, target, steps: int) -> list:
  is_text = "text" in run.parts
  classes = _class_names(run)
  logits = np.asarray(run.task.apply(run.model, run.variables, batch,
                                     train=False))
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  chosen = _target(run, logits, target, classes)
  found = attribution.integrated_gradients(
      run, batch, chosen, run.parts.get("token_embeddings") if is_text
      else None, steps, _special(run, batch) if is_text else None)
  maps = (attribution.sown(run, batch, "attention")
          if "attention" in run.parts else [])
  pad = run.config.model.get("pad_id", 0)
  records = []
  for i in range(len(chosen)):
    record = {"target": classes[chosen[i]],
              "predicted": classes[int(logits[i].argmax())],
              "probability": float(probs[i, chosen[i]]),
              "logit": float(found["logit"][i]),
              "baseline_logit": float(found["baseline_logit"][i]),
              "ig_sum": float(found["integrated_gradients"][i].sum())}
    if is_text:
      ids = batch["inputs"][i]
      keep = ids != pad
      record["tokens"] = _pieces(run, ids[keep])
      for name in ("integrated_gradients", "gradient_x_input"):
        record[name] = found[name][i][keep].round(6).tolist()
      if maps:
        roll = attribution.rollout(maps, batch["inputs"] != pad)[i]
        record["attention_png"] = f"attention_{i}.png"
        matrix_figure(os.path.join(out, record["attention_png"]), {
            "last layer (head mean)": maps[-1][i].mean(0)[keep][:, keep],
            "rollout": roll[keep][:, keep]}, record["tokens"])
    else:
      heat = {"integrated gradients": found["integrated_gradients"][i],
              "gradient x input": found["gradient_x_input"][i]}
      record["integrated_gradients"] = heat["integrated gradients"].round(
          6).tolist()
      if maps:
        heat["attention rollout"] = _patch_map(
            attribution.rollout(maps)[i], heat["integrated gradients"].shape)
      record["png"] = f"example_{i}.png"
      image_figure(os.path.join(out, record["png"]), batch["inputs"][i], heat)
    records.append(record)
  return records


def _patch_map(roll: np.ndarray, shape) -> np.ndarray:
  """What the patches received in the rollout, upsampled to the image."""
  received = roll.mean(0)
  side = int(round(np.sqrt(len(received))))
  received = received[-side * side:].reshape(side, side)  # Drops a cls.
  return np.kron(received, np.ones((shape[0] // side, shape[1] // side)))


def _class_names(run) -> list[str]:
  path = os.path.join(run.workdir, "class_names.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  return [str(i) for i in range(run.config.model.num_classes)]


def language_model(run, batch: dict, out: str) -> list:
  lens = attribution.logit_lens(run, batch, run.parts["lens"])
  probs = np.exp(lens - lens.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  maps = (attribution.sown(run, batch, "attention")
          if "attention" in run.parts else [])
  records = []
  for i, length in enumerate(batch["lengths"]):
    top = probs[:, i, :length].argmax(-1)
    words = [[_visible(run.tokenizer.decode([t])) for t in row]
             for row in top]
    pieces = [_visible(run.tokenizer.decode([t]))
              for t in batch["inputs"][i][:length]]
    record = {"tokens": pieces, "lens_top": words,
              "lens_probability": np.take_along_axis(
                  probs[:, i, :length], top[..., None], -1)[..., 0].round(
                      4).tolist(),
              "png": f"lens_{i}.png"}
    lens_figure(os.path.join(out, record["png"]),
                np.array(record["lens_probability"]), words, pieces)
    if maps:
      record["attention_png"] = f"attention_{i}.png"
      matrix_figure(os.path.join(out, record["attention_png"]), {
          "rollout": attribution.rollout(maps)[i][:length, :length]},
          pieces)
    records.append(record)
  return records


def page(run, records: list) -> str:
  parts = [f"<!doctype html><meta charset='utf-8'><title>explain "
           f"{html.escape(run.workdir)}</title><style>body{{font:14px "
           "sans-serif;max-width:1100px;margin:auto}}span{{padding:1px 2px;"
           "border-radius:3px;line-height:1.9}}</style>",
           f"<h1>{html.escape(run.workdir)} (step {run.step})</h1>"]
  for i, r in enumerate(records):
    parts.append(f"<h2>Example {i}</h2>")
    if "target" in r:
      parts.append(
          f"<p>explaining <b>{html.escape(r['target'])}</b> (p = "
          f"{r['probability']:.3f}; predicted {html.escape(r['predicted'])})"
          f"; integrated gradients sum to {r['ig_sum']:.4f}, logit - "
          f"baseline = {r['logit'] - r['baseline_logit']:.4f}</p>")
    if "tokens" in r and "integrated_gradients" in r:
      for name in ("integrated_gradients", "gradient_x_input"):
        parts.append(f"<p>{name.replace('_', ' ')}:<br>" + token_html(
            r["tokens"], np.array(r[name])) + "</p>")
    for key in ("png", "attention_png"):
      if key in r:
        parts.append(f"<p><img src='{r[key]}'></p>")
  return "\n".join(parts) + "\n"


@entrypoint
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--out", required=True, help="a new directory")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--input", action="append",
                    help="a text, or an image file for image runs")
  what.add_argument("--split", help="explain examples of this split")
  parser.add_argument("--examples", type=int, default=4)
  parser.add_argument("--target", help="the class explained (default: the "
                      "predicted one)")
  parser.add_argument("--steps", type=int, default=64,
                      help="integrated gradients' path steps")
  runs.add_step_arg(parser)
  args = parser.parse_args(argv)
  run = runs.load(args.workdir, args.step)
  if "classify" in run.parts:
    run.require("explain_text" if "text" in run.parts else "explain_image")
  else:
    run.require("logit_lens")
  if args.split and "classify" not in run.parts:
    raise ConfigError("--split explains classifiers; give a language model "
                      "--input texts.")
  batch = (split_batch(run, args.split, args.examples) if args.split
           else given_batch(run, args.input))
  with workdirs.new_directory(args.out) as staging:
    records = (classifier(run, batch, staging, args.target, args.steps)
               if "classify" in run.parts else
               language_model(run, batch, staging))
    with open(os.path.join(staging, "attributions.json"), "w") as f:
      json.dump({"workdir": args.workdir, "step": run.step,
                 "examples": records}, f, indent=1)
    with open(os.path.join(staging, "index.html"), "w") as f:
      f.write(page(run, records))
  print(f"explained {len(records)} example(s) of {args.workdir} (step "
        f"{run.step}): {os.path.join(args.out, 'index.html')}")


if __name__ == "__main__":
  main()
