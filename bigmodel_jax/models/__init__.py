"""Model families. Each module exposes `VARIANTS`, `model_config` and `make`."""
