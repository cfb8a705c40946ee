"""Dissimilarity guidance (anti-memorisation guidance in closed form): repel predicted images from members.

Importing this package (``privaudit``'s plugin registry does) registers ``RepelPipeline`` with
diffusers, so ``DiffusionPipeline.from_pretrained(DIR/protected)`` resolves the protected pipeline
offline, without pickles or code in the folder (``pipeline.py``). ``denoiser.py`` is the rule as a
``Denoiser``; the plugin is ``mitigation.Repel``.
"""

from privaudit.plugins.mitigations.repel import pipeline as _pipeline  # noqa: F401 (registers with diffusers)
from privaudit.plugins.mitigations.repel.mitigation import Repel

__all__ = ["Repel"]
