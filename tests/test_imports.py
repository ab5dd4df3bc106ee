"""The import graph of zenfer_jax and torch_port: no cycles, and the layering the packages keep.

The graph is read from the source with `ast`, so nothing is imported to build it. Every import
statement counts, also one inside a function: a late import that only dodges a cycle at import
time is still a cycle between the two modules. `from a import b` is an edge to the module
`a.b` when there is one, else to `a`; a module's own parent packages are not edges (Python
runs their __init__ first, whatever the module imports).

Two levels are checked: modules, and packages, where each role package of zenfer_jax (model,
data, rundir, config, training, nas, deploy) and torch_port are one node and zenfer_jax's
top-level modules one node each. The packages stand on floors (`FLOORS`): a package imports only
from floors below its own, so no import goes upwards, and a new package or top-level module has
to be given its floor here.
"""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ('zenfer_jax', 'torch_port')


def _modules() -> dict[str, pathlib.Path]:
  out = {}
  for package in PACKAGES:
    for path in sorted((ROOT / package).rglob('*.py')):
      parts = list(path.relative_to(ROOT).with_suffix('').parts)
      if parts[-1] == '__init__':
        parts.pop()
      out['.'.join(parts)] = path
  return out


def _imports(name: str, path: pathlib.Path, modules: dict) -> set[str]:
  """The project modules `name` imports anywhere in its source."""
  package = name.split('.') if path.name == '__init__.py' else name.split('.')[:-1]
  targets = set()
  for node in ast.walk(ast.parse(path.read_text(encoding='utf-8'), str(path))):
    if isinstance(node, ast.Import):
      targets.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # Relative: from the package upwards.
        base = '.'.join(package[: len(package) - node.level + 1] + [node.module or ''])
      else:
        base = node.module
      base = base.rstrip('.')
      for alias in node.names:
        sub = f'{base}.{alias.name}'
        targets.add(sub if sub in modules else base)
  found = set()
  for target in targets:
    while target and target not in modules:  # `import a.b.c` of a name inside a module
      target = target.rpartition('.')[0]
    if target and target != name:
      found.add(target)
  return found


# Lowest first. Top level: the modules every floor uses, then the entry point.
FLOORS = (
  ('zenfer_jax', 'zenfer_jax.errors', 'zenfer_jax.atomic_write', 'zenfer_jax.dataset_names'),
  ('zenfer_jax.cli',),
  ('zenfer_jax.model',),
  ('zenfer_jax.data', 'zenfer_jax.rundir'),
  ('zenfer_jax.config',),
  ('zenfer_jax.training', 'zenfer_jax.nas', 'zenfer_jax.configs'),
  ('zenfer_jax.deploy', 'torch_port'),
  ('zenfer_jax.main', 'zenfer_jax.serve'),
)


def module_graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def package_of(module: str) -> str:
  parts = module.split('.')
  if parts[0] != 'zenfer_jax':
    return parts[0]
  return '.'.join(parts[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  out: dict[str, set[str]] = {}
  for module, targets in graph.items():
    node = out.setdefault(package_of(module), set())
    node.update(package_of(t) for t in targets if package_of(t) != package_of(module))
  return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle, as a closed path a -> ... -> a, per strongly connected component (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  components = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.add(w)
        if w == v:
          break
      if len(component) > 1 or v in graph.get(v, ()):
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return [_closed_path(graph, c) for c in components]


def _closed_path(graph: dict[str, set[str]], component: set[str]) -> list[str]:
  """A shortest cycle through the component's first node (breadth first)."""
  start = min(component)
  parents = {start: None}
  queue = [start]
  for v in queue:
    for w in sorted(graph.get(v, ())):
      if w == start:  # Back at the start: walk the parents from v.
        path = [v]
        while parents[path[-1]] is not None:
          path.append(parents[path[-1]])
        return [*reversed(path), start]
      if w in component and w not in parents:
        parents[w] = v
        queue.append(w)
  raise AssertionError(f'no cycle through {start} in {sorted(component)}')


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
  seen, todo = set(), [start]
  while todo:
    v = todo.pop()
    for w in graph.get(v, ()):
      if w not in seen:
        seen.add(w)
        todo.append(w)
  return seen


@pytest.fixture(scope='module')
def graph() -> dict[str, set[str]]:
  return module_graph()


def test_the_graph_finds_known_imports(graph):
  # Top-level, function-local, `from package import module` and relative-free forms.
  assert 'zenfer_jax.training.steps' in graph['zenfer_jax.training.loop']
  assert 'zenfer_jax.training.steps' in graph['zenfer_jax.deploy.evaluate']  # inside evaluate()
  assert 'zenfer_jax.rundir.model_directory' in graph['torch_port.convert']
  assert 'zenfer_jax.data.builders.common' in graph['zenfer_jax.data.builders.rafdb']
  assert 'zenfer_jax.data' not in graph['zenfer_jax.data.builders.rafdb']  # parent: no edge
  assert len(graph) > 40


def test_cycle_finder_names_the_cycle():
  g = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(), 'e': {'e'}}
  assert sorted(cycles(g)) == [['a', 'b', 'c', 'a'], ['e', 'e']]
  assert cycles({'a': {'b'}, 'b': set()}) == []


def test_no_module_cycles(graph):
  found = cycles(graph)
  assert not found, 'import cycles between modules:\n' + '\n'.join(' -> '.join(c) for c in found)


def test_no_package_cycles(graph):
  found = cycles(package_graph(graph))
  assert not found, 'import cycles between packages:\n' + '\n'.join(' -> '.join(c) for c in found)


def test_every_package_stands_on_a_floor(graph):
  placed = {p for floor in FLOORS for p in floor}
  missing = sorted(set(package_graph(graph)) - placed)
  assert not missing, f'packages on no floor (add them to FLOORS in {__file__}): {missing}'


def test_no_upward_imports(graph):
  floor_of = {p: i for i, floor in enumerate(FLOORS) for p in floor}
  bad = sorted(
    f'{p} (floor {floor_of[p]}) -> {t} (floor {floor_of[t]})'
    for p, targets in package_graph(graph).items()
    for t in targets
    if floor_of.get(t, -1) >= floor_of.get(p, len(FLOORS))
  )
  assert not bad, 'imports of the same floor or one above:\n' + '\n'.join(bad)


def test_zenfer_jax_never_imports_torch_port(graph):
  bad = sorted(
    f'{m} -> {t}'
    for m, targets in graph.items()
    if package_of(m) != 'torch_port'
    for t in targets
    if package_of(t) == 'torch_port'
  )
  assert not bad, 'zenfer_jax must not depend on torch_port:\n' + '\n'.join(bad)


def test_evaluation_does_not_need_the_training_loop(graph):
  assert 'zenfer_jax.training.loop' not in reachable(graph, 'zenfer_jax.deploy.evaluate')


def test_torch_port_convert_does_not_need_tensorflow(graph):
  # zenfer_jax.data is where TensorFlow comes in (its builders and pipelines).
  reached = reachable(graph, 'torch_port.convert')
  assert not {m for m in reached if package_of(m) == 'zenfer_jax.data'}, sorted(reached)


def _run(code: str) -> str:
  p = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300
  )
  assert p.returncode == 0, p.stderr[-2000:]
  return p.stdout


@pytest.mark.slow
def test_importing_evaluate_and_what_it_uses_leaves_train_unloaded(graph):
  # Everything evaluate reaches except the TensorFlow data package, imported for real.
  used = sorted(
    m for m in reachable(graph, 'zenfer_jax.deploy.evaluate') if package_of(m) != 'zenfer_jax.data'
  )
  assert 'zenfer_jax.training.steps' in used
  out = _run(
    'import importlib, sys\n'
    f'for m in {["zenfer_jax.deploy.evaluate", *used]!r}:\n'
    '  importlib.import_module(m)\n'
    "print('zenfer_jax.training.loop' in sys.modules, 'zenfer_jax.training.steps' in sys.modules)\n"
  )
  assert out.split() == ['False', 'True']


@pytest.mark.slow
def test_convert_class_names_without_tensorflow():
  out = _run(
    'import argparse, sys\n'
    'from torch_port import convert\n'
    "names = convert._class_names(argparse.Namespace(class_names=None, dataset='affectnet/7cls'))\n"
    "print(','.join(names), 'tensorflow' in sys.modules)\n"
  )
  assert out.split() == ['neutral,happy,sad,surprise,fear,disgust,anger', 'False']


# What each command imports to answer `--help`, in a fresh interpreter: the heavy libraries
# among them. The deferred imports listed in docs/architecture.md ("Deferred imports") keep
# these lists short; a hoisted import that drags TensorFlow or JAX into a command's start-up
# fails here.
HEAVY = (
  'tensorflow',
  'tensorflow_datasets',
  'torch',
  'jax',
  'flax',
  'orbax',
  'grain',
  'apache_beam',
  'cv2',
  'onnxruntime',
  'ai_edge_litert',
)
HELP_IMPORTS = {
  'zenfer_jax.deploy.predict': [],
  'zenfer_jax.deploy.evaluate': [],
  'zenfer_jax.deploy.export': [],
  'zenfer_jax.serve.server': [],
  'zenfer_jax.data.prepare': [],
  'zenfer_jax.data.digits_folders': [],
  'zenfer_jax.main': [],
  # The nas package imports the Zen-score, and with it JAX and Flax (zenfer_jax/nas/__init__.py).
  'zenfer_jax.nas.search': ['jax', 'flax'],
}
ABSL_COMMANDS = ('zenfer_jax.main', 'zenfer_jax.nas.search')  # `run()` parses sys.argv.

_HELP_PROBE = """
import contextlib, importlib, io, json, sys
heavy, absl_commands, found = {heavy!r}, {absl!r}, {{}}
for name in {names!r}:
  module = importlib.import_module(name)
  text = io.StringIO()
  with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
    try:
      if name in absl_commands:
        sys.argv = [name, '--help']
        module.run()
      else:
        module.main(['--help'])
    except SystemExit:
      pass
  assert '--help' in text.getvalue(), (name, text.getvalue()[-500:])
  # Cumulative: the commands run in order, so the first one to import a library shows it.
  found[name] = [h for h in heavy if h in sys.modules]
print(json.dumps(found))
"""


def test_help_of_each_command_leaves_tensorflow_and_jax_unimported():
  # Two interpreters side by side: zenfer_jax.main and nas.search define the same absl flags.
  groups = [[n for n in HELP_IMPORTS if n != 'zenfer_jax.nas.search'], ['zenfer_jax.nas.search']]
  procs = [
    subprocess.Popen(
      [sys.executable, '-c', _HELP_PROBE.format(heavy=HEAVY, absl=ABSL_COMMANDS, names=group)],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=ROOT,
    )
    for group in groups
  ]
  found = {}
  for p in procs:
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-2000:]
    found.update(json.loads(out.splitlines()[-1]))
  assert found == HELP_IMPORTS
