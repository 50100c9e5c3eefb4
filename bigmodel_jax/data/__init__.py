"""Inputs, picked by `config.input.name`: each module fulfils
`contracts.InputModule` (`batch_spec`, `units`, `Input`, `load_tokenizer`);
`common.py` holds what they share, `tfds_source.py` TFDS access."""
