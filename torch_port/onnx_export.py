"""The reference model, exported: the ONNX writer of `python -m zenfer_jax.deploy.export --format
onnx`.

zenfer_jax never imports torch_port, so `zenfer_jax.deploy.export` finds this writer through the
'zenfer_jax.exporters' entry point (pyproject.toml). The variables are loaded strictly into
torch_port's reference PyTorch network (key-for-key the original, held to the Flax model by the
parity tests), an NHWC -> NCHW transpose is put in front so the file takes the Flax model's
layout, and `torch.onnx.export(dynamo=True)` (torch.export, the maintained exporter) writes it.
onnxruntime runs this graph faster at batch 1 than the jax2onnx conversion of the Flax model
(docs/deploy.md, "Why these routes").
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from collections.abc import Mapping

from torch_port.export import export_state_dict
from torch_port.reference_model import build_reference_model

__all__ = ['write_onnx']

CARD_KEY = 'model_card'
INPUT_NAME = 'images'
OUTPUT_NAME = 'logits'


@contextlib.contextmanager
def _quiet_stdout():
  """torch.onnx prints its progress on stdout; the export CLI prints one summary line instead."""
  saved = sys.stdout
  sys.stdout = io.StringIO()
  try:
    yield
  finally:
    sys.stdout = saved


def write_onnx(
  variables: Mapping, card: Mapping, path: str, *, batch: int | None, image_size: int
) -> None:
  """Write the model of `card` with `variables` to `path`, the card in its metadata_props."""
  try:
    import torch
  except ImportError:
    raise ImportError(
      "--format onnx exports torch_port's reference PyTorch model: install the torch extra "
      "(pip install -e '.[torch]')"
    ) from None
  import onnx

  class NHWC(torch.nn.Module):
    """The reference network behind an NHWC -> NCHW transpose (the Flax model's layout)."""

    def __init__(self, inner):
      super().__init__()
      self.inner = inner

    def forward(self, x):
      return self.inner(x.permute(0, 3, 1, 2))

  flags = dict(use_sa=card['use_sa'], use_lw_att=card['use_lw_att'])
  net = build_reference_model(card['structure'], card['num_classes'], **flags)
  net.load_state_dict(
    export_state_dict(variables, card['structure'], card['num_classes'], **flags), strict=True
  )
  wrapped = NHWC(net).eval()
  # torch.export specialises a dimension of size 1, so a dynamic batch is traced at 2.
  example = torch.zeros(batch or 2, image_size, image_size, 3)
  dynamic = None if batch else {'x': {0: torch.export.Dim('batch')}}
  with torch.no_grad(), _quiet_stdout():
    program = torch.onnx.export(
      wrapped,
      (example,),
      dynamo=True,
      input_names=[INPUT_NAME],
      output_names=[OUTPUT_NAME],
      dynamic_shapes=dynamic,
      optimize=True,
      verbose=False,
    )
  proto = program.model_proto
  del proto.metadata_props[:]
  entry = proto.metadata_props.add()
  entry.key, entry.value = CARD_KEY, json.dumps(dict(card))
  proto.doc_string = f'ZenNet {card["structure"]}: NHWC float32 normalised images -> logits'
  onnx.checker.check_model(proto)
  onnx.save_model(proto, path)
