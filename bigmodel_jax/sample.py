"""Prints text sampled from the newest checkpoint of a training run.

  python -m bigmodel_jax.sample --workdir runs/shakespeare --prompt "ROMEO:" \\
      --max_new_tokens 300 --temperature 0.8 --top_k 200
"""
import argparse

import jax
import numpy as np

from bigmodel_jax import sampling


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", default="\n")
  parser.add_argument("--max_new_tokens", type=int, default=500)
  parser.add_argument("--temperature", type=float, default=0.8,
                      help="0 decodes greedily")
  parser.add_argument("--top_k", type=int, default=200)
  parser.add_argument("--num_samples", type=int, default=1)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--step", type=int, default=None,
                      help="checkpoint step (default: newest)")
  args = parser.parse_args(argv)

  _, model, params, tokenizer = sampling.load_run(args.workdir, args.step)
  prompt = np.tile(tokenizer.encode(args.prompt), (args.num_samples, 1))
  new = sampling.generate(model, params, prompt, args.max_new_tokens,
                          jax.random.key(args.seed),
                          temperature=args.temperature, top_k=args.top_k)
  for row in new:
    print(args.prompt + tokenizer.decode(row))
    print("-" * 40)


if __name__ == "__main__":
  main()
