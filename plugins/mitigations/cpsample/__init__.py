"""CPSample (Kazdan et al., ICLR 2025, arXiv 2409.07025): classifier-protected sampling.

Importing this package (``privaudit``'s plugin registry does) registers
``CPSamplePipeline`` and ``CPSampleTextPipeline`` with diffusers, so ``DiffusionPipeline.from_pretrained(DIR/protected)``
resolves the protected pipeline offline, without pickles or code in the folder (see
``pipeline.py``). The plugin itself is ``mitigation.CPSample``.
"""

from privaudit.plugins.mitigations.cpsample import pipeline as _pipeline  # noqa: F401 (registers with diffusers)
from privaudit.plugins.mitigations.cpsample import text_pipeline as _text_pipeline  # noqa: F401 (likewise)
from privaudit.plugins.mitigations.cpsample.mitigation import CPSample

__all__ = ["CPSample"]
