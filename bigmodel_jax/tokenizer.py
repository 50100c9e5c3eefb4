"""Trains a byte-level BPE on an experiment's training text and saves it.

  python -m bigmodel_jax.tokenizer --config experiments/gpt_text.py:cpu \\
      --out tokenizer.json [--config.input.vocab_size=8000]

Reads the config's `text_corpus` input (TFDS dataset or file globs), trains
on the first `input.tokenizer_train_mb` MB of the training split with a
progress bar, saves a Hugging Face tokenizer.json and prints its
compression (bytes per token) and encoding throughput on that text. Pass it
to training as `--config.input.tokenizer_file=tokenizer.json`.
"""
import os
import sys
import time

from bigmodel_jax import config_loader
from bigmodel_jax.data import text_corpus
from bigmodel_jax.dataio import token_store
from bigmodel_jax.dataio.bpe import BPE
from bigmodel_jax.errors import ConfigError, entrypoint


@entrypoint
def main(argv=None) -> None:
  parser = config_loader.arg_parser(__doc__)
  parser.add_argument("--out", required=True,
                      help="the tokenizer.json file to write")
  args, config = config_loader.parse_args(parser, argv)
  config, out = config.input, args.out
  if config.name != "text_corpus":
    raise ConfigError(f"input.name is {config.name!r}: the tokenizer trains "
                      "on a text_corpus input.")
  if os.path.isdir(out):
    raise ConfigError(f"--out {out} is a directory; name the tokenizer.json "
                      "file to write.")
  limit = config.tokenizer_train_mb << 20
  texts = list(text_corpus.limited(
      text_corpus.pieces(config, config.train_split)[0], limit))
  tokenizer = BPE.train(texts, config.vocab_size)
  tokenizer.save(out)
  size = sum(len(t.encode("utf-8")) for t in texts)
  start = time.perf_counter()
  count = sum(map(len, token_store.encode(tokenizer, texts)))
  seconds = time.perf_counter() - start
  print(f"wrote {out}: {tokenizer.vocab_size:,} tokens; on {size / 1e6:.1f} MB "
        f"of training text {size / count:.2f} bytes/token, encoding "
        f"{size / 1e6 / seconds:.1f} MB/s")
  sys.stdout.flush()


if __name__ == "__main__":
  main()
