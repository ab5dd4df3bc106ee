"""Knowledge distillation: the teacher a run learns from besides its labels (`config.distill_from`).

A small network trained against a stronger model's softened outputs (Hinton, Vinyals & Dean,
"Distilling the Knowledge in a Neural Network", 2015) also learns which wrong classes each face
resembles, which one-hot labels, and FER2013's noisy ones least of all, do not say. The teacher
is anything this package loads: a training workdir (its best model), a model directory, or a
shipped model's name; a larger network (ZenNet-M-SA for R-SA) or the same one trained longer
("born-again" networks). It runs in inference mode (running BatchNorm statistics) on the
student's own augmented, mixed batch, at the student's input size: the networks are
convolutional up to their global pooling. The loss is `zenfer_jax.training.losses.distillation`,
weighted `config.distill_weight` against the labels' cross-entropy, at
`config.distill_temperature`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from zenfer_jax.errors import UserError
from zenfer_jax.model import zennet
from zenfer_jax.rundir import model_directory
from zenfer_jax.rundir import workdir as workdir_lib

__all__ = ['Teacher', 'TeacherMismatchError', 'load_teacher']


class TeacherMismatchError(ValueError, UserError):
  """The teacher predicts other classes than the run trains on."""


@dataclasses.dataclass(frozen=True)
class Teacher:
  model: zennet.ZenNet
  variables: dict  # {'params', 'batch_stats'} as NumPy: replicated with the train state.
  source: str
  card: dict

  def describe(self) -> dict:
    """What the student's model card records of its teacher."""
    return {
      'teacher': self.source,
      'teacher_structure': self.card['structure'],
      'teacher_image_size': self.card.get('image_size'),
    }


def load_teacher(
  config: ml_collections.ConfigDict, num_classes: int, class_names: Sequence[str] | None
) -> Teacher | None:
  """The teacher `config.distill_from` names, or None when distillation is off.

  Raises TeacherMismatchError when its classes are not the run's (a different count, or names
  in another order: the distillation target would teach one class as another).
  """
  source = config.get('distill_from', '')
  if not source:
    return None
  variables, card = workdir_lib.load_inference(os.path.expanduser(source))
  theirs = card.get('class_names')
  if card['num_classes'] != num_classes or (
    theirs is not None and class_names is not None and list(theirs) != list(class_names)
  ):
    raise TeacherMismatchError(
      f'distill_from {source!r}: the teacher predicts {card["num_classes"]} classes '
      f'{theirs}, this run trains {num_classes} {list(class_names or [])}. A teacher must '
      'predict the same classes in the same order.'
    )
  model = model_directory.build_from_card(
    card,
    conv_impl=config.model.conv_impl,
    bn_impl=config.model.bn_impl,
    dtype=zennet.DTYPES[config.model.dtype],
  )
  variables = jax.tree_util.tree_map(np.asarray, jax.device_get(dict(variables)))
  logging.info(
    'Distilling from %s (%s, %d parameters): weight %.3g, temperature %.3g.',
    source,
    card['structure'],
    zennet.count_params(variables['params']),
    config.distill_weight,
    config.distill_temperature,
  )
  return Teacher(model, variables, source, card)
