"""Inputs, picked by `config.input.name`: each module fulfils
`contracts.InputModule` (`batch_spec`, `units`, `Input`, `load_tokenizer`);
what they are built from lives in `dataio/`."""
