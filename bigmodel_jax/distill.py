"""Knowledge distillation (Hinton et al. 2015): a training-time wrapper that
makes any loss task also learn from a frozen teacher run's outputs.

  config.distill.teacher_workdir = "runs/teacher"   # a run of the same task
  config.distill.temperature = 2.0                  # T
  config.distill.alpha = 0.5                        # weight of the soft loss

objective = (1 - alpha) * hard + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

per predicted position (language models: every token; classifiers: every
example), under the batch's weights. `experiment.build` wraps the run's
task when `teacher_workdir` is set, as it adds pruning to the optimizer:
the hard loss, metrics and report stay those of the task, "kl" is logged
beside them. The teacher is loaded by `runs.load` onto this run's mesh,
called without gradients and never checkpointed with the student. The
student's run is an ordinary run of its task: evaluating, sampling,
serving or exporting it never needs the teacher. (Runs saved with
`task.name = "distill"` load as runs of their family's default task.)
"""
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections.config_dict import placeholder

from bigmodel_jax import loss_task, runs
from bigmodel_jax.errors import ConfigError


def config_block() -> ml_collections.ConfigDict:
  """`config.distill`: off until `teacher_workdir` is set."""
  return ml_collections.ConfigDict(dict(
      teacher_workdir=placeholder(str), teacher_step=placeholder(int),
      temperature=2.0, alpha=0.5))


def soft_kl(student, teacher, temperature):
  """KL(teacher || student) of the tempered distributions, per position."""
  log_t = jax.nn.log_softmax(teacher / temperature, -1)
  log_s = jax.nn.log_softmax(student / temperature, -1)
  p_t = jnp.exp(log_t)
  return jnp.sum(jnp.where(p_t > 0, p_t * (log_t - log_s), 0.0), -1)


def wrap(task, config):
  """`task` learning from the teacher of `config.distill` as well, or
  `task` itself when no teacher is set."""
  block = config.get("distill") or {}
  if not block.get("teacher_workdir"):
    return task
  return Distilled(task, config)


class Distilled:
  """A loss task (`loss_task.LossTask`) with the teacher's soft loss."""

  def __init__(self, task, config):
    block = config.distill
    if not 0 <= block.alpha <= 1 or block.temperature <= 0:
      raise ConfigError(f"config.distill: alpha={block.alpha} must be in "
                        f"[0, 1], temperature={block.temperature} > 0.")
    if not hasattr(task, "objective"):
      raise ConfigError(f"Task {task.name!r} has its own update: "
                        "distillation needs a loss task.")
    self.task = task
    self.teacher = runs.load(block.teacher_workdir, block.teacher_step,
                             mesh=dict(config.mesh))
    for field in ("vocab_size", "num_classes"):
      mine, theirs = (config.model.get(field),
                      self.teacher.config.model.get(field))
      if mine != theirs:
        raise ConfigError(f"The teacher {block.teacher_workdir} has "
                          f"{field}={theirs}, the student {mine}: they must "
                          "predict the same outputs.")
    self.temperature, self.alpha = block.temperature, block.alpha

  def __getattr__(self, name):  # Everything else is the task's.
    return getattr(self.task, name)

  def apply(self, model, variables, batch: dict, **kwargs):
    """(student outputs, teacher logits); with `mutable`, the student's
    updated state after them."""
    out = self.task.apply(model, variables, batch, **kwargs)
    teacher = jax.lax.stop_gradient(self.teacher.task.apply(
        self.teacher.model, self.teacher.variables, batch, train=False))
    if kwargs.get("mutable") is not None:
      student, new_state = out
      return (student, teacher), new_state
    return out, teacher

  def _with_kl(self, sums, outputs, batch):
    student, teacher = outputs
    weights = batch.get("weights")
    kl = soft_kl(student, teacher, self.temperature)
    sums["kl"] = jnp.sum(kl * weights if weights is not None else kl)
    return sums

  def sums(self, outputs, batch: dict) -> dict:
    return self._with_kl(self.task.sums(outputs[0], batch), outputs, batch)

  def eval_sums(self, outputs, batch: dict) -> dict:
    return self._with_kl(self.task.eval_sums(outputs[0], batch), outputs,
                         batch)

  def objective(self, sums: dict, normalizer):
    hard = self.task.objective(sums, normalizer)
    soft = sums["kl"] / normalizer * self.temperature ** 2
    return (1 - self.alpha) * hard + self.alpha * soft

  def train_metrics(self, sums: dict) -> dict:
    return {**self.task.train_metrics(sums), "kl": sums["kl"] / sums["count"]}

  def summarize(self, totals: dict) -> dict:
    return {**self.task.summarize(totals),
            "kl": float(totals["kl"]) / float(totals["count"])}

  # The generic steps, over these sums and this objective.
  grad_fn = loss_task.LossTask.grad_fn
  train_step = loss_task.LossTask.train_step
  eval_step = loss_task.LossTask.eval_step
