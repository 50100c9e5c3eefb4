"""Input pipelines. Each module exposes `Input` and `load_tokenizer`."""
