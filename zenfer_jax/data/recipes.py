"""The train/eval preprocessing recipes by name, free of TensorFlow and JAX.

Both input paths read them: tf.data (`pipeline`) and Grain (`grain_pipeline`, which must not
import TensorFlow), so they live apart from either.
"""

from __future__ import annotations

import dataclasses

from zenfer_jax import dataset_names


@dataclasses.dataclass(frozen=True)
class Recipe:
  """Train/eval preprocessing of one dataset family (the reference recipes; docs/datasets.md, "Pipelines")."""

  name: str
  augment: bool  # The RAF-DB/AffectNet train chain; False: resize only (plus `shift`).
  resize_ratio: float = 0.75  # Train: shorter side resized to round(size / ratio) first.
  crop_scale: tuple[float, float] = (0.8, 1.0)
  erasing_scale: tuple[float, float] = (0.02, 0.1)
  erasing_ratio: tuple[float, float] = (0.3, 3.3)
  erasing_p: float = 0.5
  lighting_std: float = 0.1
  balanced: bool = False
  eval_center_crop: bool = False  # Eval: shorter side + centre crop, else a plain resize.
  shift_fraction: float = 0.0  # Train: random translation by up to this fraction of the size.
  autoaugment: bool = True  # Train (with `augment`): AutoAugment's ImageNet policy.
  rotate_degrees: float = 0.0  # Train (with `augment`): a uniform rotation in +-this, first.


RECIPES = {
  'rafdb': Recipe('rafdb', augment=True),
  'affectnet': Recipe(
    'affectnet', augment=True, erasing_scale=(0.4, 0.4), balanced=True, eval_center_crop=True
  ),
  # FER2013's 48x48 grey faces (chosen on short runs, PublicTest only: configs/fer2013_r.py):
  # geometry only (rotation, scale/aspect crop, flip) and erasing; AutoAugment's colour and
  # histogram ops and PCA colour lighting mean little for grey faces and slowed learning.
  'fer2013': Recipe(
    'fer2013',
    augment=True,
    resize_ratio=1.0,
    crop_scale=(0.64, 1.0),
    erasing_scale=(0.02, 0.15),
    lighting_std=0.0,
    autoaugment=False,
    rotate_degrees=10.0,
  ),
  # 8x8 digits upscaled: a small shift only; digits are not mirror-symmetric.
  'digits': Recipe('digits', augment=False, shift_fraction=0.125),
  'none': Recipe('none', augment=False),
}
DEFAULT_RECIPE = dict(dataset_names.DEFAULT_RECIPES)  # TF-free, so torch_port.convert can read it


def default_recipe(name: str) -> str:
  return DEFAULT_RECIPE[name.split('/')[0]]


def resolve(recipe: str | Recipe | None, name: str) -> Recipe:
  """The Recipe named `recipe` (or given), else `name`'s default one."""
  if isinstance(recipe, Recipe):
    return recipe
  key = recipe or default_recipe(name)
  if key not in RECIPES:
    raise ValueError(f'Unknown recipe {key!r}; expected one of {list(RECIPES)}.')
  return RECIPES[key]
