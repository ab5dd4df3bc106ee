"""Zero-shot architecture search: the Zen-score and the evolutionary search around it."""

from zenfer_jax.nas.zen_score import ZenScore, ZenScorer, zen_score

__all__ = ['ZenScore', 'ZenScorer', 'zen_score']
