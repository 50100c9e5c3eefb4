"""Prints text sampled from the newest checkpoint of a run that can generate
(capabilities.py: a next-token task, a family that decodes, a tokenizer).

  python -m bigmodel_jax.sample --workdir runs/shakespeare --prompt "ROMEO:" \\
      --max_new_tokens 300 --temperature 0.8 --top_k 200

A run fine-tuned on conversations (it has a chat template) takes the prompt
as the user's message and prints the assistant's reply, up to the
end-of-document token; `--raw` continues the prompt text as it is. A run
that captions images reads `--image PATH` and prints its captions. A run
that turns text into text (T5) encodes the prompt and prints the texts it
decodes from it, `--beams N`: the best of a beam search.
"""
import argparse

import jax
import numpy as np

from bigmodel_jax import decoding, runs
from bigmodel_jax.dataio import images
from bigmodel_jax.errors import ConfigError, entrypoint


def _check(args) -> None:
  for name, low in (("max_new_tokens", 0), ("temperature", 0), ("top_k", 0),
                    ("num_samples", 1), ("beams", 1)):
    value = getattr(args, name)
    if not value >= low:  # Also NaN.
      raise ConfigError(f"--{name}={value} is not allowed: it must be >= "
                        f"{low}.")
  if not args.prompt:
    raise ConfigError("--prompt is empty; give at least one character.")


def _prompt(run, args) -> tuple[np.ndarray, dict]:
  """One row of decoder prompt ids and the prefill inputs of every row."""
  rows = args.num_samples
  if args.image:
    return run.tokenizer.encode(""), _image_inputs(run, args.image, rows)
  if "text_to_text" in run.capabilities:  # The decoder starts from pad.
    sources = run.tokenizer.encode_batch([args.prompt],
                                         run.parts["source_prompt"])
    return (np.asarray([run.tokenizer.pad_id], np.int32),
            {"sources": np.repeat(sources, rows, 0)})
  chat = run.chat_template if not args.raw else None
  if chat:
    return chat.prompt_ids(run.tokenizer, [{"role": "user",
                                            "content": args.prompt}]), {}
  return run.tokenizer.encode(args.prompt), {}


def _image_inputs(run, path: str | None, rows: int) -> dict:
  """{"images": ...} of `--image` (a captioning run), else {}."""
  if not path:
    return {}
  try:
    with open(path, "rb") as f:
      pixels = images.reader(run.config.input)(f.read())
  except (OSError, ValueError) as e:
    raise ConfigError(f"--image {path}: {e}") from None
  return {"images": np.repeat(pixels[None], rows, 0)}


@entrypoint
def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", default="\n")
  parser.add_argument("--max_new_tokens", type=int, default=500)
  parser.add_argument("--temperature", type=float, default=0.8,
                      help="0 decodes greedily")
  parser.add_argument("--top_k", type=int, default=200, help="0: no limit")
  parser.add_argument("--num_samples", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  runs.add_step_arg(parser)
  parser.add_argument("--raw", action="store_true",
                      help="ignore the run's chat template")
  parser.add_argument("--image", help="the image a captioning run reads")
  parser.add_argument("--beams", type=int, default=1,
                      help="beam search (the best of each sample's beams, "
                      "within the context)")
  args = parser.parse_args(argv)
  _check(args)

  run = runs.load(args.workdir, args.step)
  run.require("caption" if args.image else "text_to_text"
              if "text_to_text" in run.capabilities else "generate")
  ids, inputs = _prompt(run, args)
  prompt = np.tile(ids, (args.num_samples, 1))
  if args.beams > 1:  # Within the context: beams do not slide over it.
    new, _ = decoding.beam_search(
        run.model, run.params, prompt,
        min(args.max_new_tokens, run.parts["decode"] - len(ids)),
        beams=args.beams,
        context=run.parts["decode"], eos_id=run.tokenizer.eos_id,
        inputs=inputs)
  else:
    new = decoding.generate(run.model, run.params, prompt,
                            args.max_new_tokens, jax.random.key(args.seed),
                            context=run.parts["decode"],
                            temperature=args.temperature, top_k=args.top_k,
                            inputs=inputs)
  answers = inputs or (run.chat_template and not args.raw)
  for row in new:
    if answers:  # The reply ends at the end-of-document token.
      ends = np.flatnonzero(row == run.tokenizer.eos_id)
      print(run.tokenizer.decode(row[:ends[0] if len(ends) else len(row)]))
    else:
      print(args.prompt + run.tokenizer.decode(row))
    print("-" * 40)


if __name__ == "__main__":
  main()
