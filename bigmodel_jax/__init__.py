"""bigmodel_jax: train, fine-tune, evaluate and compress large models in JAX."""
