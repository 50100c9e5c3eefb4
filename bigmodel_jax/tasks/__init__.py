"""Tasks, picked by `config.task.name`: each module exposes `Task(config)`
(see `contracts.Task`); `loss_task.LossTask` serves tasks that are one loss."""
