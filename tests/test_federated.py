"""Federated rounds and differential privacy: what the definitions say."""
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bigmodel_jax import (checkpoints, config_loader, experiment,
                          metric_writer, plan, privacy, steps, train)
from bigmodel_jax.errors import ConfigError
from bigmodel_jax.federated import partition, rounds

VIT = str(pathlib.Path(__file__).resolve().parents[1] / "experiments" /
          "vit_digits.py") + ":cpu"
TINY_VIT = {
    "model.num_layers": 1, "model.emb_dim": 16, "model.num_heads": 2,
    "model.mlp_dim": 32, "model.dropout": 0.0, "input.batch_size": 8,
    "input.mixup_alpha": 0.0, "total_steps": 4, "log_every_steps": 1,
    "eval_every_steps": 2, "checkpoint_every_steps": 2,
    "optimizer.warmup_steps": 0}
FEDERATED = {**TINY_VIT, "federated.clients": 12,
             "federated.clients_per_round": 8, "federated.local_steps": 2,
             "federated.partition": "dirichlet", "federated.alpha": 0.5,
             "federated.prox_mu": 0.1, "federated.client_learning_rate": 0.5}


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x)) for x in
                         jax.tree.leaves(tree)])


def test_partitions_cover_the_data_and_skew_labels_as_alpha_says():
  labels = np.repeat(np.arange(10), 100)
  for kind in partition.KINDS:
    parts = partition.partition(kind, 1000, 20, 0, labels=labels, alpha=0.1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))
  assert {len(p) for p in partition.partition("iid", 1000, 20, 0)} == {50}

  def classes_per_client(alpha):
    parts = partition.partition("dirichlet", 1000, 20, 0, labels=labels,
                                alpha=alpha)
    return np.mean([len(np.unique(labels[p])) for p in parts])
  assert classes_per_client(0.1) < 4 < 9 < classes_per_client(100)
  with pytest.raises(ConfigError, match="has none"):
    partition.partition("dirichlet", 100, 4, 0, labels=None)
  assert list(partition.sampled_clients(10, 4, 0, 3)) == list(
      partition.sampled_clients(10, 4, 0, 3))  # A pure function of the round.


def _reference_round(exp, state, batch, rng):
  """One round as its definition says: a Python loop over the clients on
  one device, then the weighted average of their updates (FedAvg, lr 1)."""
  fed = exp.task
  block = fed.block
  client = jax.jit(fed.client(exp.model, exp.trainable))
  host = jax.device_get((state.params, state.model_state))
  weights = np.asarray(batch["fed_weight"]).reshape(
      block.clients_per_round, -1)[:, 0]
  rngs = rounds.client_rngs(jax.random.fold_in(rng, 0),
                            block.clients_per_round)
  rows = len(weights) and len(batch["targets"]) // len(weights)
  mean = None
  for k in range(block.clients_per_round):
    batches = {key: np.asarray(v)[k * rows:(k + 1) * rows].reshape(
        block.local_steps, -1, *np.shape(v)[1:])
               for key, v in batch.items() if key != "fed_weight"}
    delta, _, _ = client(*host, batches, rngs[k])
    scaled = jax.tree.map(lambda d, w=weights[k]: w * np.asarray(d), delta)
    mean = scaled if mean is None else jax.tree.map(np.add, mean, scaled)
  return jax.tree.map(np.subtract, host[0], mean)


def test_round_on_the_mesh_equals_a_python_loop_over_clients():
  """8 clients vmapped over 8 devices = each client trained alone."""
  config = config_loader.load(VIT, FEDERATED)
  exp = experiment.build(config)
  assert exp.mesh.size == 8
  state, _ = exp.initial_state()
  batch = exp.data.train_batch(0)
  assert len(batch["targets"]) == 8 * 2 * 8
  rng = exp.rngs()[1]
  expected = _reference_round(exp, state, batch, rng)
  new_state, metrics = exp.train_step(state, exp.global_batch(batch), rng)
  assert bool(metrics["finite"])
  assert float(metrics["train/update_norm"]) > 0
  np.testing.assert_allclose(_flat(new_state.params), _flat(expected),
                             rtol=1e-5, atol=1e-6)


def test_fedavg_of_one_client_and_one_step_is_centralized_sgd():
  config = config_loader.load(VIT, {
      **TINY_VIT, "federated.clients": 1, "federated.clients_per_round": 1,
      "federated.local_steps": 1, "federated.client_learning_rate": 0.1})
  exp = experiment.build(config, devices=jax.devices()[:1])
  state, _ = exp.initial_state()
  batch = exp.data.train_batch(0)
  plain = {k: v for k, v in batch.items() if k != "fed_weight"}
  task = exp.task.task
  grads, *_ = steps.loss_grads(task, exp.model)(
      state.params, {}, plain, jax.random.key(0), task.normalizer(plain))
  sgd = jax.device_get(jax.tree.map(lambda w, g: w - 0.1 * g, state.params,
                                    grads))
  new_state, _ = exp.train_step(state, exp.global_batch(batch),
                                exp.rngs()[1])  # Donates `state`.
  np.testing.assert_allclose(_flat(new_state.params), _flat(sgd),
                             rtol=1e-5, atol=1e-7)


def test_dp_sgd_clips_every_example_then_adds_the_stated_noise():
  config = config_loader.load(VIT, {**TINY_VIT, "dp.noise_multiplier": 0.0,
                                    "dp.clip_norm": 0.05})
  exp = experiment.build(config, devices=jax.devices()[:1])
  state, _ = exp.initial_state()
  batch = exp.data.train_batch(0)
  inner = steps.loss_grads(exp.task.task, exp.model)
  clip = 0.05
  expected, norms = None, []
  for i in range(8):  # Each example's gradient, clipped by hand.
    grads, *_ = inner(state.params, {}, {k: v[i:i + 1] for k, v in
                                          batch.items()},
                      jax.random.key(0), 1.0)
    norm = float(jnp.sqrt(sum(jnp.sum(g ** 2)
                              for g in jax.tree.leaves(grads))))
    norms.append(norm)
    scaled = jax.tree.map(lambda g, n=norm: g * min(1.0, clip / n), grads)
    expected = scaled if expected is None else jax.tree.map(
        jnp.add, expected, scaled)
  assert max(norms) > clip  # The clipping bites.
  dp = privacy.clipped_noised(inner, None, clip, 0.0)
  got, _, sums, _ = dp(state.params, {}, batch, jax.random.key(0), 8.0)
  np.testing.assert_allclose(_flat(got), _flat(expected) / 8, rtol=1e-5,
                             atol=1e-8)
  assert float(sums["clipped"]) == sum(n > clip for n in norms)
  assert np.linalg.norm(_flat(got)) <= clip + 1e-6  # Mean of clipped ones.
  noisy = privacy.clipped_noised(inner, None, clip, 2.0)
  noised, *_ = noisy(state.params, {}, batch, jax.random.key(0), 8.0)
  noise = (_flat(noised) - _flat(got)) * 8
  assert abs(noise.std() / (2.0 * clip) - 1) < 0.05  # std sigma * C


def test_accountant_matches_dp_accounting_and_stops_at_the_budget():
  from dp_accounting import dp_event, pld
  # Abadi et al.'s MNIST setting: 60,000 examples, batches of 256,
  # sigma 1.1, 60 epochs, delta 1e-5.
  rate, count = 256 / 60000, 60 * 60000 // 256
  eps = privacy.epsilon(1.1, rate, count, 1e-5)
  assert eps == pytest.approx(2.5966, abs=1e-3)
  tight = pld.PLDAccountant().compose(dp_event.PoissonSampledDpEvent(
      rate, dp_event.GaussianDpEvent(1.1)), count).get_epsilon(1e-5)
  assert tight < eps < 1.5 * tight  # RDP is an upper bound, not a loose one.
  sigma = privacy.calibrated(3.0, rate, count, 1e-5)
  assert privacy.epsilon(sigma, rate, count, 1e-5) == pytest.approx(3.0,
                                                                    rel=1e-2)
  block = privacy.config_block()
  block.noise_multiplier, block.epsilon_budget = 1.0, 2.0
  accountant = privacy.Accountant(block, sampling_rate=0.05, total_steps=400,
                                  examples=1000, what="test")
  last, line = accountant.limit()
  assert 0 < last < 400 and "stopping" in line
  assert accountant.epsilon(last) <= 2.0 < accountant.epsilon(last + 1)


def test_private_run_logs_epsilon_and_stops_at_its_budget(tmp_path):
  overrides = {**TINY_VIT, "total_steps": 6, "eval_every_steps": 1,
               "dp.noise_multiplier": 0.8, "dp.clip_norm": 1.0}
  config = config_loader.load(VIT, overrides)
  accountant = experiment.build(config, devices=jax.devices()[:1]
                                ).task.accountant
  budget = (accountant.epsilon(3) + accountant.epsilon(4)) / 2
  config = config_loader.load(VIT, {**overrides, "dp.epsilon_budget": budget})
  train.train(config, str(tmp_path), devices=jax.devices()[:1])
  assert checkpoints.steps(str(tmp_path))[-1] == 3
  records = [r for r in metric_writer.read_jsonl(str(tmp_path))
             if "privacy/epsilon" in r]
  assert [r["step"] for r in records] == [1, 2, 3]
  assert records[-1]["privacy/epsilon"] == pytest.approx(
      accountant.epsilon(3)) and accountant.epsilon(3) <= budget
  assert all(0 <= r["train/clipped_fraction"] <= 1 for r in
             metric_writer.read_jsonl(str(tmp_path))
             if "train/clipped_fraction" in r)


@pytest.mark.slow
def test_federated_run_resumes_to_identical_rounds(tmp_path):
  """Rounds 1-4 straight = rounds 1-2, a stop, then 3-4; user-level DP on."""
  overrides = {**FEDERATED, "dp.level": "user", "dp.noise_multiplier": 0.5,
               "dp.clip_norm": 0.5, "federated.server_optimizer": "fedadam",
               "federated.server_learning_rate": 0.01}
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  train.train(config_loader.load(VIT, overrides), str(straight))
  train.train(config_loader.load(VIT, {**overrides, "total_steps": 2}),
              str(resumed))
  train.train(config_loader.load(VIT, overrides), str(resumed))

  def trained(workdir):
    exp = experiment.build(config_loader.load(VIT, overrides))
    return _flat(checkpoints.restore_params(str(workdir),
                                            exp.factory.abstract.params)[0])
  np.testing.assert_array_equal(trained(straight), trained(resumed))
  logged = {r["step"]: r for r in metric_writer.read_jsonl(str(straight))}
  assert logged[4]["privacy/epsilon"] > logged[2]["privacy/epsilon"] > 0


@pytest.mark.slow
def test_flower_server_and_three_clients_equal_the_simulation(tmp_path):
  """A Flower server and 3 client processes on 127.0.0.1 end where the
  simulation with the same seed and partitions ends."""
  overrides = {**TINY_VIT, "total_steps": 3, "eval_every_steps": 3,
               "checkpoint_every_steps": 3, "federated.clients": 3,
               "federated.clients_per_round": 3, "federated.local_steps": 2,
               "federated.partition": "dirichlet",
               "federated.server_optimizer": "fedavgm",
               "mesh.data": 1}
  train.train(config_loader.load(VIT, overrides), str(tmp_path / "sim"),
              devices=jax.devices()[:1])
  args = [f"--config.{k}={v}" for k, v in overrides.items()]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  port = 18000 + os.getpid() % 1000
  command = [sys.executable, "-m", "bigmodel_jax.federated"]
  common = ["--config", VIT, *args, "--address", f"127.0.0.1:{port}"]
  procs = [subprocess.Popen(command + ["server", *common, "--workdir",
                                       str(tmp_path / "flower")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)]
  procs += [subprocess.Popen(command + ["client", *common, "--partition",
                                        str(k)], env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL) for k in range(3)]
  try:
    out, _ = procs[0].communicate(timeout=300)
    for proc in procs[1:]:
      proc.wait(timeout=60)
  finally:
    for proc in procs:
      proc.kill()
  assert procs[0].returncode == 0, out[-3000:]
  assert "round 3/3" in out
  exp = experiment.build(config_loader.load(VIT, overrides),
                         devices=jax.devices()[:1])

  def trained(name):
    return _flat(checkpoints.restore_params(
        str(tmp_path / name), exp.factory.abstract.params)[0])
  np.testing.assert_allclose(trained("flower"), trained("sim"), rtol=1e-4,
                             atol=1e-6)
  assert any("val/accuracy" in r for r in
             metric_writer.read_jsonl(str(tmp_path / "flower")))


def test_a_language_model_trains_federated_by_document(tiny_config):
  """Token windows partition by position (contiguous: by document), and
  the planner compiles a round."""
  config = tiny_config(**{"federated.clients": 16,
                          "federated.clients_per_round": 8,
                          "federated.partition": "contiguous",
                          "federated.local_steps": 2,
                          "federated.client_learning_rate": 1.0})
  exp = experiment.build(config)
  parts = exp.data.parts
  assert all(p[-1] + 1 == q[0] for p, q in zip(parts, parts[1:]))
  state, _ = exp.initial_state()
  rng = exp.rngs()[1]
  losses = []
  for step in range(3):
    state, metrics = exp.train_step(
        state, exp.global_batch(exp.data.train_batch(step)), rng)
    losses.append(float(metrics["train/loss"]))
  assert losses[-1] < losses[0]
  assert plan.plan(exp.config)["parameters"] == exp.num_params()


def test_clients_train_with_dp_sgd_under_example_level_dp():
  config = config_loader.load(VIT, {**FEDERATED, "dp.noise_multiplier": 1.0})
  exp = experiment.build(config)
  accountant = exp.task.accountant
  smallest = min(len(p) for p in exp.data.parts)
  assert accountant.per_step == 2 and accountant.rate == pytest.approx(
      min(1.0, 8 / smallest))
  state, _ = exp.initial_state()
  _, metrics = exp.train_step(state, exp.global_batch(exp.data.train_batch(0)),
                              exp.rngs()[1])
  assert bool(metrics["finite"])
  assert 0 < float(metrics["train/clipped_fraction"]) <= 1


def test_membership_attack_scores_every_example_of_both_splits():
  """The loss-threshold attack's AUC and advantage, by their definitions,
  over all 1,438 training and 359 test digits (padding rows dropped)."""
  from sklearn.metrics import roc_auc_score
  from bigmodel_jax.evaluators import membership
  exp = experiment.build(config_loader.load(VIT, TINY_VIT),
                         devices=jax.devices()[:1])
  state, _ = exp.initial_state()
  attack = membership.Evaluator({"members": "train", "outsiders": "test"}, exp)
  inside = attack.split_losses(state.variables, "train")
  outside = attack.split_losses(state.variables, "test")
  assert (len(inside), len(outside)) == (1438, 359)
  scalars, _ = attack(state.variables)
  truth = np.r_[np.ones(len(inside)), np.zeros(len(outside))]
  scores = -np.r_[inside, outside]
  assert scalars["auc"] == pytest.approx(roc_auc_score(truth, scores))
  best = max((np.mean(scores[truth == 1] >= t) -
              np.mean(scores[truth == 0] >= t)) for t in np.unique(scores))
  assert scalars["advantage"] == pytest.approx(best)
  assert scalars["member_loss"] == pytest.approx(inside.mean())
