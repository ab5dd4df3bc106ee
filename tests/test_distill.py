"""Knowledge distillation: the loss against NumPy, the train step with a teacher against the same
step written out by hand, the teacher's class check, and a real run that distils and resumes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_fixtures import flat, mapped_train_step, step_inputs, tiny_config

from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib
from zenfer_jax.training import distill, init, loop, losses, parallel
from zenfer_jax.training import train_state as ts

STRUCTURE = 'SuperConvK3BNRELU(3,8,2,1)SuperConvK3BNRELU(8,16,2,1)'
TEACHER = 'SuperConvK3BNRELU(3,16,2,1)SuperConvK3BNRELU(16,16,2,1)'
NUM_CLASSES = 10
DIGITS = [str(d) for d in range(10)]


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize('temperature', [1.0, 2.0, 4.0])
def test_distillation_loss_is_t_squared_kl_and_its_gradient(temperature):
  rng = np.random.default_rng(0)
  s = rng.normal(size=(5, 7)).astype(np.float32) * 3
  t = rng.normal(size=(5, 7)).astype(np.float32) * 3
  p, q = _softmax(t / temperature), _softmax(s / temperature)
  want = temperature**2 * np.mean(np.sum(p * (np.log(p) - np.log(q)), -1))
  got = losses.distillation(jnp.asarray(s), jnp.asarray(t), temperature)
  assert float(got) == pytest.approx(float(want), rel=1e-5)
  assert float(losses.distillation(jnp.asarray(t), jnp.asarray(t), temperature)) == pytest.approx(
    0.0, abs=1e-6
  )
  grad = jax.grad(losses.distillation)(jnp.asarray(s), jnp.asarray(t), temperature)
  np.testing.assert_allclose(grad, temperature * (q - p) / s.shape[0], rtol=1e-4, atol=1e-7)


@pytest.fixture(scope='module')
def setup():
  config, model, variables, batch = step_inputs(STRUCTURE, NUM_CLASSES)
  _, teacher_model, teacher, _ = step_inputs(TEACHER, NUM_CLASSES, seed=1)
  # Running statistics other than the initial (0, 1): the teacher must use them.
  teacher['batch_stats'] = jax.tree_util.tree_map(
    lambda v: np.asarray(v) + 0.3, teacher['batch_stats']
  )
  return config, model, variables, teacher_model, teacher, batch


def _step(teacher_model, weight, temperature):
  return mapped_train_step(
    NUM_CLASSES,
    0.05,
    teacher_apply_fn=teacher_model.apply,
    distill_weight=weight,
    distill_temperature=temperature,
  )


def test_train_step_mixes_the_teacher_into_the_loss(setup):
  config, model, variables, teacher_model, teacher, batch = setup
  state = ts.create_train_state(config, model, variables, lambda s: 0.05, teacher=teacher)
  weight, temperature = 0.7, 3.0
  new_state, m = _step(teacher_model, weight, temperature)(
    parallel.replicate(state), batch, jax.random.PRNGKey(3)
  )
  new_state, m = parallel.unreplicate_to_host((new_state, m))

  def loss_fn(params, images, labels):
    logits, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      images,
      train=True,
      mutable=['batch_stats'],
    )
    t_logits = teacher_model.apply(teacher, images, train=False)
    ce = losses.soft_cross_entropy(logits, losses.smooth_one_hot(labels, NUM_CLASSES, 0.1))
    kd = losses.distillation(logits, t_logits, temperature)
    return (1 - weight) * ce + weight * kd, kd

  shards = [
    jax.value_and_grad(loss_fn, has_aux=True)(variables['params'], x, y)
    for x, y in zip(batch['image'], batch['label'])
  ]
  assert float(m['loss']) == pytest.approx(np.mean([float(s[0][0]) for s in shards]), rel=1e-5)
  assert float(m['distill_loss']) == pytest.approx(
    np.mean([float(s[0][1]) for s in shards]), rel=1e-5
  )
  assert float(m['distill_loss']) > 0.01  # Different networks: the term is not trivially zero.
  grads = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *[s[1] for s in shards])
  expected = state.apply_gradients(grads=grads)
  got = flat(new_state.params)
  for k, v in flat(jax.device_get(expected.params)).items():
    np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-6, err_msg=k)
  # The teacher rides along unchanged and is never checkpointed.
  for k, v in flat(teacher).items():
    np.testing.assert_array_equal(flat(new_state.teacher)[k], v)
  assert 'teacher' not in ts.to_state_dict(new_state)


def test_a_teacher_of_other_classes_is_refused(tmp_path, setup):
  config, _, _, _, teacher, _ = setup
  card = model_directory.make_card(TEACHER, NUM_CLASSES, class_names=DIGITS[::-1])
  path = model_directory.save_model_dir(tmp_path / 'teacher', teacher, card)
  config = tiny_config('/unused', distill_from=path)
  with pytest.raises(distill.TeacherMismatchError, match=r"\['9', '8'.*this run trains 10"):
    distill.load_teacher(config, NUM_CLASSES, DIGITS)
  with pytest.raises(distill.TeacherMismatchError, match='predicts 10 classes'):
    distill.load_teacher(config, 7, None)
  assert distill.load_teacher(tiny_config('/unused'), NUM_CLASSES, DIGITS) is None


@pytest.mark.parametrize(
  ('key', 'value', 'match'),
  [
    ('distill_weight', 0.0, 'distill_weight'),
    ('distill_weight', 1.5, 'distill_weight'),
    ('distill_temperature', 0.0, 'distill_temperature'),
    ('distill_from', '/no/such/teacher', 'distill_from'),
  ],
)
def test_bad_distillation_settings_name_the_key(key, value, match):
  from zenfer_jax.config.validation import ConfigError, validate_config

  with pytest.raises(ConfigError, match=match):
    validate_config(tiny_config('/unused', **{key: value}))


@pytest.mark.slow
def test_a_distilled_run_records_its_teacher_and_resumes(tmp_path, digits_dir, setup):
  _, _, _, _, teacher, _ = setup
  card = model_directory.make_card(TEACHER, NUM_CLASSES, class_names=DIGITS, image_size=16)
  path = model_directory.save_model_dir(tmp_path / 'teacher', teacher, card)
  overrides = {
    'model.structure': STRUCTURE,
    'model.use_sa': False,
    'distill_from': path,
    'distill_weight': 0.5,
    'distill_temperature': 2.0,
    'num_epochs': 2,
  }
  workdir = str(tmp_path / 'run')
  loop.train_and_evaluate(tiny_config(digits_dir, **overrides), workdir)
  records = workdir_lib.read_metrics(workdir)
  assert [r['step'] for r in records] == [3, 6]
  assert all(np.isfinite(r['train_loss']) for r in records)
  run_card = model_directory.load_card(workdir)
  assert run_card['distillation'] == {
    'teacher': path,
    'teacher_structure': card['structure'],
    'teacher_image_size': 16,
    'weight': 0.5,
    'temperature': 2.0,
  }
  # The best model is the student alone: the teacher's arrays are not in it.
  variables, _ = model_directory.load_model_dir(f'{workdir}/{workdir_lib.MODEL_BEST}')
  assert set(flat(variables['params'])) == set(
    flat(
      init.initial_variables(
        tiny_config('/unused', **overrides),
        init.build_model(tiny_config('/unused', **overrides), NUM_CLASSES),
        jax.random.PRNGKey(0),
      )['params']
    )
  )
  # Rerunning resumes at the end (the teacher is loaded again, nothing retrains).
  loop.train_and_evaluate(tiny_config(digits_dir, **overrides), workdir)
  assert workdir_lib.read_metrics(workdir) == records
