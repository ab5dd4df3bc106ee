"""The structure language: round trips, every block family, typed errors, fuzzing."""

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zenfer_jax.model import structure as S
from zenfer_jax.model.structure import StructureError

ALL_FAMILIES = (
  'SuperConvK3BNRELU(3,16,2,1)SuperResK3K3(16,24,1,16,1)SuperResK5K5(24,32,2,16,2)'
  'SuperResK7K7(32,32,1,16,1)SuperResK1K3K1(32,48,2,16,1)SuperResK1K5K1(48,48,1,16,1)'
  'SuperResK1K7K1(48,48,1,16,1)SuperResIDWE1K3(48,64,2,32,1)SuperResIDWE2K5(64,64,1,48,2)'
  'SuperResIDWE4K7(64,64,1,48,1)SuperResIDWE6K3(64,64,1,48,1)SuperConvK1BNRELU(64,256,1,1)'
  'SuperConvK5BNRELU(256,8,1,2)SuperConvK7BNRELU(8,8,1,1)'
)


def test_round_trip_every_family():
  s = S.parse(ALL_FAMILIES)
  assert str(s) == ALL_FAMILIES
  assert [b.family for b in s][:5] == ['conv', 'kxkx', 'kxkx', 'kxkx', 'k1kxk1']
  assert s[7].expansion == 1 and s[8].kernel_size == 5 and s[9].expansion == 4
  assert s[0].bottleneck is None and s[1].bottleneck == 16


def test_every_block_type_parses():
  assert len(S.BLOCK_TYPES) == 4 + 3 + 3 + 12
  for name, spec in S.BLOCK_TYPES.items():
    args = '3,8,1,1' if spec.family == 'conv' else '3,8,1,8,1'
    text = f'{name}({args})'
    assert str(S.parse(text)) == text


def test_reference_files_round_trip(reference_dir):
  for f in ('ZenNet-M-flops400M.txt', 'ZenNet-R-flops400M.txt'):
    text = (reference_dir / f).read_text()
    assert str(S.load(reference_dir / f)) == text.strip()
    assert str(S.parse(text + '\n')) == text.strip()


def test_presets_and_resolve(tmp_path, reference_dir):
  m = S.resolve('zennet_m')
  assert str(m) == (reference_dir / 'ZenNet-M-flops400M.txt').read_text().strip()
  assert (
    str(S.resolve('zennet_r')) == (reference_dir / 'ZenNet-R-flops400M.txt').read_text().strip()
  )
  p = tmp_path / 'best_structure.txt'
  p.write_text(str(m) + '\n')
  assert S.resolve(str(p)) == m
  assert S.resolve(p) == m
  assert S.resolve(m) is m
  with pytest.raises(StructureError, match='neither a preset'):
    S.resolve('zennet_x')


def test_block_name_prefix_round_trips():
  text = 'SuperConvK3BNRELU(stem|3,8,2,1)SuperResK1K3K1(b1|8,16,2,8,1)'
  s = S.parse(text)
  assert s[0].name == 'stem' and s[1].name == 'b1'
  assert str(s) == text


@pytest.mark.parametrize(
  'text, message, position',
  [
    ('', 'empty structure', None),
    ('   \n', 'empty structure', None),
    ('SuperConvK3BNRELU(3,8,2,1)SuperFoo(8,8,1,1)', "unknown block 'SuperFoo'", 26),
    ('SuperResK3K5(3,8,1,8,1)', "unknown block 'SuperResK3K5'", 0),
    ('SuperConvK3BNRELU(3,8,2)', 'takes 4 arguments', 18),
    ('SuperResK3K3(3,8,1,8)', 'takes 5 arguments', 13),
    ('SuperConvK3BNRELU(3,8,x,1)', "expected an integer argument, got 'x'", 22),
    ('SuperConvK3BNRELU(3,8,1.5,1)', 'expected an integer', 22),
    ('SuperConvK3BNRELU(3,0,2,1)', 'out_channels must be a positive integer, got 0', 0),
    ('SuperConvK3BNRELU(3,8,2,-1)', 'sub_layers must be a positive integer', 0),
    ('SuperResK3K3(3,8,1,0,1)', 'bottleneck must be a positive integer', 0),
    ('SuperConvK3BNRELU(3,8,3,1)', 'stride must be 1 or 2, got 3', 0),
    (
      'SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(16,16,1,8,1)',
      "differs from the previous block's out_channels 8",
      26,
    ),
    ('SuperConvK3BNRELU(1,8,2,1)', 'in_channels must be 3', 0),
    ('SuperConvK3BNRELU(3,8,2,1', "expected ')'", 18),
    ('SuperConvK3BNRELU 3,8,2,1)', "expected '('", 17),
    ('SuperConvK3BNRELU(3,8,2,1);', 'expected a block name', 26),
  ],
)
def test_errors_name_position_and_expectation(text, message, position):
  with pytest.raises(StructureError, match=re.escape(message)) as info:
    S.parse(text)
  assert isinstance(info.value, ValueError)
  assert info.value.position == position


def test_file_reads_first_structure_line_like_the_reference(tmp_path):
  p = tmp_path / 's.txt'
  p.write_text('\nSuperConvK3BNRELU(3,8,2,1)\nscore=12.5 found at iteration 300\n')
  assert str(S.load(p)) == 'SuperConvK3BNRELU(3,8,2,1)'
  (tmp_path / 'empty.txt').write_text('\n\n')
  with pytest.raises(StructureError, match='empty structure file'):
    S.load(tmp_path / 'empty.txt')


def test_file_errors_name_the_file(tmp_path):
  p = tmp_path / 'bad.txt'
  p.write_text('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(9,8,1,8,1)\n')
  with pytest.raises(StructureError, match='bad.txt'):
    S.load(p)


def test_sa_width_rule_is_checked_before_compute():
  from zenfer_jax.model.zennet import build_model

  with pytest.raises(StructureError, match='multiple of 8'):
    build_model('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,20,1,20,1)', 7, use_sa=True)
  build_model('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,20,1,20,1)', 7, use_sa=False)


def test_smart_round():
  assert S.smart_round(96) == 96
  assert S.smart_round(3) == 8
  assert S.smart_round(100) == 96  # 12.5 rounds half to even
  assert S.smart_round(108) == 112
  assert S.smart_round(40 * 6) == 240


# ---- fuzzing: whatever the text, the parser either succeeds or raises StructureError ----

_tokens = st.sampled_from(
  [
    'SuperConvK3BNRELU',
    'SuperResK3K3',
    'SuperResK1K5K1',
    'SuperResIDWE6K7',
    '(',
    ')',
    ',',
    '|',
    '3',
    '8',
    '16',
    '0',
    '-1',
    '2',
    'x',
    ' ',
    '\n',
    'SuperRes',
    'K7',
    'BNRELU',
    '1',
  ]
)


def _parse_or_structure_error(text):
  try:
    s = S.parse(text)
  except StructureError:
    return
  # Anything accepted must print to a string that parses to the same structure.
  assert S.parse(str(s)) == s


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_random_text(text):
  _parse_or_structure_error(text)


@settings(max_examples=300, deadline=None)
@given(st.lists(_tokens, max_size=40).map(''.join))
def test_fuzz_token_soup(text):
  _parse_or_structure_error(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(ALL_FAMILIES) - 1), st.integers(0, 5), st.text(max_size=3))
def test_fuzz_mutated_valid_strings(pos, cut, insert):
  text = ALL_FAMILIES[:pos] + insert + ALL_FAMILIES[pos + cut :]
  _parse_or_structure_error(text)


# ---- bounded inputs: absurd sizes fail fast with a StructureError, parsing is linear ----


def _chain(n: int) -> str:
  return 'SuperConvK3BNRELU(3,8,2,1)' + 'SuperResK3K3(8,8,1,8,1)' * (n - 1)


def _seconds(fn, repeats: int = 7) -> float:
  # CPU time of this process, best of several: wall time on a loaded machine measures the load.
  best = float('inf')
  for _ in range(repeats):
    t = time.process_time()
    fn()
    best = min(best, time.process_time() - t)
  return best


def test_parse_time_is_linear_in_blocks():
  # Validating the whole chain after every block made 2,000 blocks take 10 s (quadratic).
  small, large = _chain(32), _chain(S.MAX_BLOCKS)
  assert len(S.parse(large)) == S.MAX_BLOCKS
  # One parse of 8x the blocks against eight parses of the small chain: linear is ~1x,
  # quadratic ~8x; both sides are long enough for the clock's resolution.
  ratio = _seconds(lambda: S.parse(large)) / _seconds(lambda: [S.parse(small) for _ in range(8)])
  assert ratio < 3, f'8x the blocks took {ratio:.1f}x the time of 8 small parses (quadratic ~8x)'


@pytest.mark.parametrize(
  'text, message',
  [
    (_chain(16_000), 'a structure string of 368,003 characters exceeds the limit of 65,536'),
    (_chain(300), f'more than {S.MAX_BLOCKS} blocks'),
    ('SuperConvK3BNRELU(3,8,2,1000000)', 'sub_layers 1000000 exceeds the limit of 128'),
    ('SuperConvK3BNRELU(3,1000000000,2,1)', 'out_channels 1000000000 exceeds the limit of 65536'),
    ('SuperConvK3BNRELU(3,8,2,1)SuperResK3K3(8,8,1,1000000000,1)', 'bottleneck 1000000000'),
    ('SuperConvK3BNRELU(3,8,2,1)' + 'SuperResK3K3(8,8,1,8,100)' * 11, 'sub-layers to 1101'),
    ('SuperConvK3BNRELU(3,8,2,' + '9' * 5000 + ')', 'expected an integer argument'),
  ],
)
def test_absurd_sizes_fail_fast(text, message):
  t = time.perf_counter()
  with pytest.raises(StructureError, match=re.escape(message)):
    S.parse(text)
  assert time.perf_counter() - t < 0.5


def test_limits_hold_for_structures_built_in_code():
  block = S.parse('SuperConvK3BNRELU(3,8,2,1)')[0]
  with pytest.raises(StructureError, match='sub_layers 129 exceeds'):
    S.Structure((block.replace(sub_layers=S.MAX_SUB_LAYERS + 1),))
  big = [block] + [S.Block('SuperResK3K3', 8, 8, 1, 1, 8)] * 16_000
  t = time.perf_counter()
  with pytest.raises(StructureError, match='more than 256 blocks'):
    S.Structure(tuple(big))
  assert time.perf_counter() - t < 0.5


def test_structure_files_are_read_with_a_size_limit(tmp_path):
  t = time.perf_counter()
  with pytest.raises(StructureError, match=r'/dev/zero: larger than the 1,048,576 bytes'):
    S.resolve('/dev/zero')
  assert time.perf_counter() - t < 0.5
  (tmp_path / 'binary.txt').write_bytes(b'\xff\xfe\x00garbage')
  with pytest.raises(StructureError, match='binary.txt: not UTF-8'):
    S.load(tmp_path / 'binary.txt')
  with pytest.raises(StructureError, match='cannot read the structure file'):
    S.load(tmp_path)


def test_resolution_below_what_the_network_needs_is_refused():
  from zenfer_jax.model import counters, describe

  s = S.resolve('zennet_m')  # Five stride-2 layers: 32 pixels at least.
  assert S.min_resolution(s) == 32
  assert S.check_resolution(s, 32) == 32
  for bad in (0, -5, 1.5, True):
    with pytest.raises(StructureError, match='must be a positive integer'):
      describe.describe(s, resolution=bad)
    with pytest.raises(StructureError, match='must be a positive integer'):
      counters.flops(s, bad)
  with pytest.raises(StructureError, match='resolution 16 is below the 32 pixels'):
    describe.describe(s, resolution=16)
  assert describe.main(['--model', 'zennet_r', '--resolution', '0']) == 2
