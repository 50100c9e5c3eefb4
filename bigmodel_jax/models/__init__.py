"""Model families, picked by `config.model.name`: each module fulfils
`contracts.ModelFamily` (`Config`, `model_config`, `make`, `default_task`,
`num_params`, `flops_per_item` and the optional hooks, None when absent)."""
