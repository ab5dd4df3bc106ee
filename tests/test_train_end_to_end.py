"""benchmarks.train_end_to_end: its dataset is the real RAF-DB layout, and its table and figures
come from the run's timing.json (no model is trained here)."""

from benchmarks import train_end_to_end as e2e


def test_synthetic_rafdb_is_read_by_the_real_builder(tmp_path):
  from zenfer_jax import data

  e2e.write_rafdb_layout(str(tmp_path / 'manual'), train=12, test=5)
  assert (tmp_path / 'manual' / 'basic' / 'Image' / 'aligned' / 'test_0005_aligned.jpg').exists()
  info = data.prepare_dataset('rafdb', str(tmp_path / 'tfds'), manual_dir=str(tmp_path / 'manual'))
  assert info.split_sizes == {'train': 12, 'test': 5} and info.skipped == 0


def test_markdown_has_one_row_per_run_and_the_input_paths():
  run = {
    'model': 'ZenNet-M-SA',
    'augment_on': 'device',
    'dtype': 'float32',
    'images_per_second': 1400.0,
    'input_wait_fraction': 0.012,
    'step_seconds': 0.0457,
    'eval_seconds': 2.5,
    'checkpoint_seconds': 0.3,
    'epoch_seconds': 11.5,
    'projected_400_epochs_hours': 1.28,
  }
  result = {
    'environment': {
      'device_description': 'one GPU',
      'image_size': 224,
      'batch': 64,
      'warmup_steps': 10,
      'timed_steps': 40,
      'epochs': 2,
      'load_average_before': '0.1',
      'load_average_after': '0.2',
    },
    'runs': [run, {**run, 'augment_on': 'host', 'images_per_second': 700.0}],
    'input_only': [
      {
        'augment_on': 'host',
        'images_per_second': 130.0,
        'batch_seconds': 0.49,
        'first_batch_seconds': 3,
      },
    ],
  }
  table = e2e.markdown(result)
  rows = [line for line in table.splitlines() if line.startswith('| ZenNet')]
  assert rows == [
    '| ZenNet-M-SA | device | float32 | 1400.0 | 1.2% | 0.05 | 2.5 | 0.30 | 12 | 1.3 |',
    '| ZenNet-M-SA | host | float32 | 700.0 | 1.2% | 0.05 | 2.5 | 0.30 | 12 | 1.3 |',
  ]
  assert '| tf.data on the host | 130.0 | 0.490 | 3.0 |' in table


def test_runs_pick_the_platform_and_share_a_compilation_cache(monkeypatch):
  monkeypatch.delenv('JAX_COMPILATION_CACHE_DIR', raising=False)
  gpu = e2e._environment('gpu', '/cache')
  assert gpu['JAX_PLATFORMS'] == 'cuda' and gpu['JAX_COMPILATION_CACHE_DIR'] == '/cache/xla_cache'
  assert e2e._environment('cpu', '/cache')['JAX_PLATFORMS'] == 'cpu'
  assert e2e.REPO in gpu['PYTHONPATH'].split(':')
