"""The core's contracts: plug-ins, tasks with their own update, sharding
rules from the config, params-only restore, resuming on another mesh."""
import ast
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from bigmodel_jax import (checkpoints, config_loader, experiment, metric_writer,
                          optim, plan, registry, runs, sharding, state, steps,
                          train)
from bigmodel_jax.data import sklearn_digits

ROOT = pathlib.Path(__file__).resolve().parents[1]
GAN = str(ROOT / "experiments" / "gan_digits.py") + ":cpu"

KINDS = ("models", "data", "tasks", "evaluators")


@pytest.mark.parametrize("kind", KINDS)
def test_every_plugin_found_fulfils_its_contract(kind):
  found = registry.names(kind)
  assert found, kind
  for name in found:
    assert registry.get(kind, name).__name__.endswith(name)
  with pytest.raises(ValueError, match=f"Unknown {kind} 'nope'; have"):
    registry.get(kind, "nope")


def test_plugins_are_discovered_and_helpers_are_not_plugins():
  assert {"text_corpus", "sft", "char_lm"} <= set(registry.names("data"))
  assert not {"bpe", "chat", "common"} & set(registry.names("data"))
  assert registry.names("tasks") == ["captioning", "classification",
                                     "contrastive", "gan", "lm", "mlm",
                                     "seq2seq", "vae", "word2vec"]
  assert not {"layers", "hf_layout"} & set(registry.names("models"))


def test_a_plugin_class_without_a_member_is_named_at_pick_time(
    tmp_path, monkeypatch):
  from bigmodel_jax import tasks
  (tmp_path / "silent.py").write_text(
      "class Task:  # Everything but `report`.\n"
      "  name = 'silent'\n"
      "  required_keys = optional_keys = capabilities = frozenset()\n"
      "  config_block = None\n"
      "  model_args = apply = optimizer = train_step = eval_step = None\n"
      "  summarize = None\n")
  monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
  with pytest.raises(TypeError, match=r"lacks \['Task.report'\]"):
    registry.get("tasks", "silent")


def _imports(path: pathlib.Path, package: pathlib.Path) -> set[str]:
  """The bigmodel_jax modules a file imports (anywhere in it)."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith("bigmodel_jax")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
        "bigmodel_jax"):
      for alias in node.names:  # `from pkg import module` imports the module.
        sub = f"{node.module}.{alias.name}"
        is_module = (package.parent / (sub.replace(".", "/") + ".py")).exists()
        found.add(sub if is_module else node.module)
  return found


def test_the_package_import_graph_has_no_cycle():
  package = ROOT / "bigmodel_jax"
  graph = {}
  for path in package.rglob("*.py"):
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    graph[name.removesuffix(".__init__")] = _imports(path, package)
  visiting, done = [], set()

  def visit(module):
    if module in visiting:
      cycle = visiting[visiting.index(module):] + [module]
      pytest.fail("import cycle: " + " -> ".join(cycle))
    if module in done:
      return
    visiting.append(module)
    for dep in graph.get(module, ()):
      visit(dep)
    visiting.pop()
    done.add(module)

  for module in graph:
    visit(module)
  assert "bigmodel_jax.models.bert" not in graph["bigmodel_jax.hf.bert"]


def test_the_digits_input_does_not_import_tensorflow_datasets():
  code = ("import sys, bigmodel_jax.data.sklearn_digits; "
          "assert 'tensorflow_datasets' not in sys.modules, 'imported'")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]


def test_build_returns_the_resolved_config_and_leaves_the_callers_alone(
    tiny_config):
  config = tiny_config()
  before = config.to_json(sort_keys=True)
  exp = experiment.build(config, jax.devices()[:1])
  assert config.to_json(sort_keys=True) == before
  assert config.model.vocab_size is None and config.task.name is None
  assert exp.config.model.vocab_size == 65 and exp.config.task.name == "lm"


def test_task_and_input_must_agree_on_the_batch(tiny_config):
  with pytest.raises(ValueError, match="Task 'mlm' needs batch entries "
                     r"\['inputs', 'targets', 'weights'\].*gives \['inputs', "
                     r"'targets'\]"):
    experiment.build(tiny_config(task__name="mlm"), jax.devices()[:1])


def test_sharding_rules_come_from_the_config(tiny_config):
  mesh = dict(mesh__data=2, mesh__fsdp=2, mesh__tensor=2)
  default = experiment.build(tiny_config(**mesh))
  fc = ("block_0", "fc", "kernel")
  spec = default.factory.shardings.params
  assert spec[fc[0]][fc[1]][fc[2]].spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  moved = experiment.build(config_loader.load(
      str(ROOT / "experiments" / "gpt_shakespeare_char.py:cpu"),
      {**{k.replace("__", "."): v for k, v in mesh.items()},
       "sharding.rules.mlp": "None", "sharding.rules.embed": "data,fsdp",
       "model.num_layers": 1, "model.emb_dim": 32, "model.num_heads": 2}))
  kernel = moved.factory.shardings.params["block_0"]["fc"]["kernel"]
  assert kernel.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
  with pytest.raises(ValueError, match=r"rules.embed=\('fsdpp',\) names "
                     r"\['fsdpp'\]"):
    experiment.build(tiny_config(sharding__rules__embed="fsdpp"))


def test_train_log_and_plan_name_parameters_left_unsharded(tmp_path, capsys,
                                                           tiny_config):
  config = tiny_config(mesh__data=1, mesh__fsdp=8, model__emb_dim=36,
                       model__vocab_size=65, total_steps=3)
  result = plan.plan(config)
  assert any(line.startswith("'embed' of size 36 is not divisible by "
                             "fsdp=8: replicated along fsdp in") and
             "params/block_0/attn/query/kernel" in line
             for line in result["fallbacks"]), result["fallbacks"]
  assert "not sharded    'embed' of size 36" in plan.format_plan(result, None)
  train.train(config, str(tmp_path))
  assert "sharding: 'embed' of size 36 is not divisible by fsdp=8" in (
      capsys.readouterr().out)


def _losses(workdir) -> dict:
  return {r["step"]: r["train/loss"] for r in metric_writer.read_jsonl(workdir)
          if "train/loss" in r}


@pytest.mark.parametrize("first, then", [
    ((8, {}), (2, {})),
    ((1, {}), (8, {"mesh__data": 1, "mesh__fsdp": 4, "mesh__tensor": 2})),
])
def test_a_run_resumes_on_another_device_count_and_mesh(tmp_path, tiny_config,
                                                        first, then):
  common = dict(optimizer__decay_steps=6, model__dropout=0.1)
  whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
  train.train(tiny_config(total_steps=6, **common), whole, jax.devices()[:1])
  (count, mesh), (count_after, mesh_after) = first, then
  train.train(tiny_config(total_steps=4, **common, **mesh), parts,
              jax.devices()[:count])
  train.train(tiny_config(total_steps=6, **common, **mesh_after), parts,
              jax.devices()[:count_after])
  expected, got = _losses(whole), _losses(parts)
  for step in (5, 6):
    np.testing.assert_allclose(got[step], expected[step], rtol=1e-5)


def test_restore_params_reads_parameters_into_the_shards_of_this_mesh(
    tmp_path, tiny_config):
  workdir = str(tmp_path)
  train.train(tiny_config(total_steps=4), workdir, jax.devices()[:1])
  exp = experiment.build(tiny_config(mesh__data=2, mesh__fsdp=2,
                                     mesh__tensor=2))
  target = exp.factory.abstract.params
  params, step = checkpoints.restore_params(workdir, target)
  assert step == 4
  mgr = checkpoints.manager(workdir)
  whole = checkpoints.restore(mgr, exp.factory.abstract)
  mgr.close()
  jax.tree.map(lambda got, want, t: (
      np.testing.assert_array_equal(got, want),
      assert_sharding(got, t)), params, whole.params, target)
  run = runs.load(workdir, mesh={"fsdp": 2, "tensor": 4})
  kernel = run.params["block_0"]["fc"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert run.step == 4 and run.tokenizer.vocab_size == 65
  with pytest.raises(FileNotFoundError, match=r"No checkpoint of step 3.*"
                     r"have steps \[2, 4\]"):
    checkpoints.restore_params(workdir, target, step=3)


def assert_sharding(array, target):
  assert array.sharding.is_equivalent_to(target.sharding, array.ndim)


def test_any_input_evaluates_a_test_split_after_the_last_step(tmp_path,
                                                            tiny_config):
  last = train.train(tiny_config(total_steps=3, input__test_split="test"),
                     str(tmp_path), jax.devices()[:1])
  assert {"val/loss", "test/loss", "test/perplexity"} <= set(last)
  assert last["test/perplexity"] == pytest.approx(np.exp(last["test/loss"]))


def test_more_evaluators_run_at_their_own_cadence(tmp_path, tiny_config):
  config = tiny_config(total_steps=4)
  config.evals = ml_collections.ConfigDict({
      "train_split": {"name": "split", "split": "train", "every_steps": 2},
      "param_norms": {"every_steps": 0}})  # The module named by the key.
  last = train.train(config, str(tmp_path), jax.devices()[:1])
  records = metric_writer.read_jsonl(str(tmp_path))
  assert [r["step"] for r in records if "train_split/loss" in r] == [2, 4]
  assert [r["step"] for r in records if "param_norms/total" in r] == [4]
  assert {"param_norms/wte", "param_norms/block_0", "val/loss"} <= set(last)
  assert last["param_norms/total"] > last["param_norms/wte"] > 0


def test_an_unknown_evaluator_is_one_line_naming_those_there_are(tiny_config):
  config = tiny_config()
  config.evals = ml_collections.ConfigDict({"bleu": {"every_steps": 1}})
  with pytest.raises(ValueError, match=r"Unknown evaluators 'bleu'; have "
                     r"\['anomaly', 'captions', 'generated_images', "
                     r"'linear_probe', 'membership', 'param_norms', "
                     r"'retrieval', 'split', 'text_to_text', 'word_vectors', "
                     r"'zero_shot'\]"):
    experiment.build(config, jax.devices()[:1]).evaluators()


def test_a_gradient_function_wraps_the_generic_one(tiny_config):
  """The seam DP-SGD uses: per-example gradients (vmap of `loss_grads`),
  clipped, summed, fed to the generic update. Unclipped, it is the
  generic step; clipped to a tiny norm, every example's share is bounded."""
  exp = experiment.build(tiny_config(grad_accum_steps=2), jax.devices()[:1])
  one = steps.loss_grads(exp.task, exp.model)

  def per_example(clip):
    def grad_fn(params, model_state, batch, rng, normalizer):
      def single(example):
        row = jax.tree.map(lambda x: x[None], example)
        return one(params, model_state, row, rng, normalizer)
      grads, objective, sums, _ = jax.vmap(single)(batch)
      norms = jax.vmap(optax.tree.norm)(grads)
      scale = jnp.minimum(1.0, clip / norms)
      grads = jax.tree.map(lambda g: jnp.tensordot(scale, g, 1), grads)
      return (grads, objective.sum(), jax.tree.map(jnp.sum, sums),
              model_state)
    return grad_fn

  schedule = optim.schedule(exp.config.optimizer, exp.config.total_steps)
  state = exp.factory.init(jax.random.key(0))
  batch = exp.data.train_batch(0)
  rng = jax.random.key(1)
  generic = steps.make_train_step(exp.task, exp.model, exp.tx, schedule, 2)
  unclipped = steps.make_train_step(exp.task, exp.model, exp.tx, schedule, 2,
                                    grad_fn=per_example(1e9))
  clipped = steps.make_train_step(exp.task, exp.model, exp.tx, schedule, 2,
                                  grad_fn=per_example(1e-4))
  want, want_m = jax.jit(generic)(state, batch, rng)
  got, got_m = jax.jit(unclipped)(state, batch, rng)
  for a, b in zip(jax.tree.leaves(want.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(a, b, atol=2e-6)
  assert float(got_m["train/loss"]) == pytest.approx(
      float(want_m["train/loss"]), rel=1e-5)
  _, small = jax.jit(clipped)(state, batch, rng)
  assert float(small["train/grad_norm"]) <= 8 * 1e-4 * 1.0001


def test_a_task_owns_its_settings_block(tmp_path, monkeypatch):
  from bigmodel_jax import config_blocks, tasks
  (tmp_path / "tuned.py").write_text(
      "import ml_collections\n"
      "from bigmodel_jax.tasks import classification\n"
      "class Task(classification.Task):\n"
      "  name = 'tuned'\n"
      "  @staticmethod\n"
      "  def config_block():\n"
      "    return ml_collections.ConfigDict({'margin': 0.5})\n")
  monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(tmp_path)])
  config = config_blocks.base(total_steps=1)
  assert config.tuned.margin == 0.5
  assert {"distill", "pruning", "quantization", "evals"} <= set(config)


# --- A task with its own update: the GAN (two networks, alternating). -------

def test_a_task_with_its_own_update_never_uses_the_generic_step(monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("the generic step was used")
  monkeypatch.setattr(steps, "make_train_step", refuse)
  monkeypatch.setattr(steps, "make_eval_step", refuse)
  config = config_loader.load(GAN, {"input.batch_size": 16,
                                    "model.hidden_dim": 16})
  exp = experiment.build(config, jax.devices()[:1])
  start = exp.factory.init(jax.random.key(0))
  batch = exp.data.train_batch(0)
  rng = jax.random.key(3)
  # The same update by hand: the discriminator on real vs generated images
  # (with the recipe's R1 penalty on real images), then the generator
  # against the updated discriminator, each with its own Adam state.
  params = jax.tree.map(np.asarray, start.params)
  adam = optim.make(exp.config.optimizer, exp.config.total_steps)
  d_rng, g_rng = jax.random.split(jax.random.fold_in(rng, 0))
  z_d, z_g = (jax.random.normal(r, (16, 64)) for r in (d_rng, g_rng))
  real = batch["inputs"]

  def losses(p, z):
    return exp.task.losses(exp.model, p, real, z, None)

  def d_loss(d):
    p = {**params, "discriminator": d}
    slopes = jax.grad(lambda x: exp.model.apply(
        {"params": p}, x, method="discriminate").sum())(real)
    return (losses(p, z_d)["d_loss"].mean() + config.gan.r1_weight / 2 *
            jnp.mean(jnp.sum(slopes ** 2, (1, 2, 3))))

  assert config.gan.r1_weight > 0
  d_grads = jax.grad(d_loss)(params["discriminator"])
  d_updates, _ = adam.update(d_grads, adam.init(params["discriminator"]),
                             params["discriminator"])
  d_new = optax.apply_updates(params["discriminator"], d_updates)
  g_grads = jax.grad(lambda g: losses({"discriminator": d_new, "generator": g},
                                      z_g)["g_loss"].mean())(params["generator"])
  g_updates, _ = adam.update(g_grads, adam.init(params["generator"]),
                             params["generator"])
  expected = {"discriminator": d_new,
              "generator": optax.apply_updates(params["generator"], g_updates)}
  after, metrics = exp.train_step(start, exp.global_batch(batch), rng)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
               after.params, expected)
  assert set(after.opt_state) == {"discriminator", "generator"}
  assert bool(metrics["finite"]) and int(after.step) == 1
  assert 0 < float(metrics["train/d_real"]) < 1


def test_the_gan_learns_the_digits_pixel_statistics(tmp_path):
  workdir = str(tmp_path)
  config = config_loader.load(GAN, {"total_steps": 300,
                                    "eval_every_steps": 300,
                                    "checkpoint_every_steps": 300})
  last = train.train(config, workdir, jax.devices()[:1])
  assert {"val/d_loss", "val/g_loss", "val/d_accuracy"} <= set(last)
  real = sklearn_digits.split("test")[0].astype(np.float32) / 127.5 - 1
  z = jax.random.normal(jax.random.key(1), (512, 64))
  run = runs.load(workdir)
  fresh = state.StateFactory(
      run.model, optax.identity(),
      sharding.Layout(sharding.make_mesh({"data": 1}, jax.devices()[:1])),
      state.example_args(run.task, {"inputs": jax.ShapeDtypeStruct(
          (1, 8, 8, 1), np.float32)})).init(jax.random.key(0))

  def gap(params):
    fake = np.asarray(run.model.apply({"params": params}, z,
                                      method="generate"))
    return np.abs(fake.mean(0) - real.mean(0)).mean()

  assert gap(run.params) < 0.85 * gap(fresh.params)
