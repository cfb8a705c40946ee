"""Rejection sampling as a mitigation: serve the raw model's samples minus its copies of training images.

Importing this package (``privaudit``'s plugin registry does) registers ``RejectionPipeline`` with
diffusers, so ``DiffusionPipeline.from_pretrained(DIR/protected)`` resolves the protected pipeline
offline, without pickles or code in the folder (``pipeline.py``). ``denoiser.py`` is the rule as a
``Denoiser`` (also CPSample's "rejection sampling" control); the plugin is ``mitigation.Rejection``.
"""

from privaudit.plugins.mitigations.rejection import pipeline as _pipeline  # noqa: F401 (registers with diffusers)
from privaudit.plugins.mitigations.rejection.mitigation import Rejection

__all__ = ["Rejection"]
