"""Dataset names and each dataset's classes in label order, importable without TensorFlow.

The TFDS builders in `zenfer_jax.data` label their records in this order, and tools that only
need the names (e.g. `torch_port.convert --dataset`, which writes them into a model card) read
them here instead of starting TensorFlow.
"""

from __future__ import annotations

__all__ = [
  'ALL_DATASETS',
  'DATASETS',
  'DEFAULT_RECIPES',
  'FER2013_CLASSES',
  'FER2013_TO_RAFDB',
  'RECIPE_NAMES',
  'class_names',
  'class_summary',
  'default_recipe',
]

DATASETS = ('rafdb', 'affectnet/7cls', 'affectnet/8cls', 'fer2013', 'digits', 'folders')
# Also accepted: AffectNet cropped to the annotated face boxes.
ALL_DATASETS = DATASETS + ('affectnet/7cls_crop', 'affectnet/8cls_crop')

# RAF-DB basic: its labels 1..7 become 0..6.
RAFDB_CLASSES = ('surprise', 'fear', 'disgust', 'happiness', 'sadness', 'anger', 'neutral')
# AffectNet expression codes 0..7; the 7-class variant keeps codes 0..6.
AFFECTNET_CLASSES = ('neutral', 'happy', 'sad', 'surprise', 'fear', 'disgust', 'anger', 'contempt')
# FER2013's emotion numbers 0..6, as in the ICML fer2013.csv (Kaggle's folder copy names its
# class folders with these words).
FER2013_CLASSES = ('angry', 'disgust', 'fear', 'happy', 'sad', 'surprise', 'neutral')
# FER2013 label -> RAF-DB label, for evaluating one dataset's model on the other's images:
# angry->anger 5, disgust->disgust 2, fear->fear 1, happy->happiness 3, sad->sadness 4,
# surprise->surprise 0, neutral->neutral 6 (`np.asarray(FER2013_TO_RAFDB)[fer_labels]`).
FER2013_TO_RAFDB = (5, 2, 1, 3, 4, 0, 6)
DIGITS_CLASSES = tuple(str(d) for d in range(10))


# The preprocessing recipes of zenfer_jax.data.pipeline.RECIPES, and the one each dataset family
# is trained and evaluated with. A model card records its recipe, because evaluation differs:
# RAF-DB's aligned faces are resized whole, AffectNet's images resized on the shorter side and
# centre-cropped.
RECIPE_NAMES = ('rafdb', 'affectnet', 'fer2013', 'digits', 'none')
DEFAULT_RECIPES = {
  'rafdb': 'rafdb',
  'affectnet': 'affectnet',
  'fer2013': 'fer2013',
  'digits': 'digits',
  'folders': 'rafdb',
}


def default_recipe(name: str) -> str:
  """The recipe dataset `name` (e.g. 'affectnet/8cls') is trained with."""
  if name not in ALL_DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {list(ALL_DATASETS)}.')
  return DEFAULT_RECIPES[name.split('/')[0]]


def class_names(name: str) -> tuple[str, ...] | None:
  """The classes of dataset `name` in label order; None for 'folders' (its user names them)."""
  if name not in ALL_DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; expected one of {list(ALL_DATASETS)}.')
  family, _, config = name.partition('/')
  if family == 'rafdb':
    return RAFDB_CLASSES
  if family == 'affectnet':
    return AFFECTNET_CLASSES[: 7 if config.startswith('7cls') else 8]
  if family == 'fer2013':
    return FER2013_CLASSES
  if family == 'digits':
    return DIGITS_CLASSES
  return None


def class_summary(names, limit: int = 12) -> str:
  """The class list for a log line: all of a few, the first and last of thousands (identities)."""
  names = list(names)
  if len(names) <= limit:
    return str(names)
  half = limit // 2
  return f'[{", ".join(map(repr, names[:half]))}, ..., {", ".join(map(repr, names[-half:]))}]'
