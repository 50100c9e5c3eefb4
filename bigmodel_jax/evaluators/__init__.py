"""Evaluators, picked by `config.evals.KEY.name` (default: KEY): each
module fulfils `contracts.EvaluatorModule` and its metrics are logged as
KEY/NAME beside the task's own val/ summary (big_vision's `config.evals`).
"""
