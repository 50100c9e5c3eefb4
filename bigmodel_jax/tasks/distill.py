"""Knowledge distillation (Hinton et al. 2015): a student learns from a
frozen teacher run's logits and from the labels.

  config.task.name = "distill"
  config.distill.teacher_workdir = "runs/teacher"   # any run of the same task
  config.distill.temperature = 2.0                  # T
  config.distill.alpha = 0.5                        # weight of the soft loss

objective = (1 - alpha) * hard + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

per predicted position (language models: every token; classifiers: every
example), under the batch's weights. The hard loss, metrics and report are
those of the student's own task (the family's default: "lm" for GPT,
"classification" for BERT, ViT, ResNet classifiers), so the student is
scored exactly like a model trained without a teacher; "kl" is logged
beside them. The teacher is loaded by `runs.load` onto this run's mesh
(its parameters sharded by the rules like the student's), called without
gradients and never checkpointed with the student (it is not in the train
state).
"""
import jax
import jax.numpy as jnp

from bigmodel_jax import registry, runs
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.tasks import base


def soft_kl(student, teacher, temperature):
  """KL(teacher || student) of the tempered distributions, per position."""
  log_t = jax.nn.log_softmax(teacher / temperature, -1)
  log_s = jax.nn.log_softmax(student / temperature, -1)
  p_t = jnp.exp(log_t)
  return jnp.sum(jnp.where(p_t > 0, p_t * (log_t - log_s), 0.0), -1)


class Task(base.LossTask):
  name = "distill"

  def __init__(self, config):
    super().__init__(config)
    block = config.distill
    if not block.teacher_workdir:
      raise ConfigError("Task 'distill' needs config.distill.teacher_workdir"
                        " (a trained run of the same task).")
    if not 0 <= block.alpha <= 1 or block.temperature <= 0:
      raise ConfigError(f"config.distill: alpha={block.alpha} must be in "
                        f"[0, 1], temperature={block.temperature} > 0.")
    family = registry.get("models", config.model.name)
    self.student_task = registry.get(
        "tasks", family.default_task(config.model)).Task(config)
    self.required_keys = self.student_task.required_keys
    self.optional_keys = self.student_task.optional_keys
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

  def apply(self, model, variables, batch: dict, **kwargs):
    """(student outputs, teacher logits); with `mutable`, the student's
    updated state after them."""
    out = self.student_task.apply(model, variables, batch, **kwargs)
    teacher = jax.lax.stop_gradient(self.student_task.apply(
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
    return self._with_kl(self.student_task.sums(outputs[0], batch), outputs,
                         batch)

  def eval_sums(self, outputs, batch: dict) -> dict:
    return self._with_kl(self.student_task.eval_sums(outputs[0], batch),
                         outputs, batch)

  def normalizer(self, batch: dict):
    return self.student_task.normalizer(batch)

  def objective(self, sums: dict, normalizer):
    hard = self.student_task.objective(sums, normalizer)
    soft = sums["kl"] / normalizer * self.temperature ** 2
    return (1 - self.alpha) * hard + self.alpha * soft

  def train_metrics(self, sums: dict) -> dict:
    return {**self.student_task.train_metrics(sums),
            "kl": sums["kl"] / sums["count"]}

  def summarize(self, totals: dict) -> dict:
    return {**self.student_task.summarize(totals),
            "kl": float(totals["kl"]) / float(totals["count"])}

  def report(self, totals: dict, class_names):
    return self.student_task.report(totals, class_names)
