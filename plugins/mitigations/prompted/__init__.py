"""Sampling-time mitigations for text-to-image pipelines: one rule each behind a memorised-prompt gate.

- ``caption-noise`` (``caption_noise.py``): Gaussian noise on the prompt embedding (Somepalli et al. 2023);
- ``cfg-delay`` (``cfg_delay.py``): no or opposite guidance in the early steps (Jain et al. 2025);
- ``embed-min`` (``embed_min.py``): gradient steps on the prompt embedding (Wen et al. 2024);
- ``attn-rescale`` (``attn_rescale.py``): cross-attention towards the beginning token (Ren et al. 2024).

Shared: the rule interface (``rule.py``), the gate (``gate.py``), the served Denoiser
(``denoiser.py``), the protected pipeline (``pipeline.py``) and the plugin base (``mitigation.py``).
Importing this package registers ``PromptMitigatedPipeline`` and every rule, so
``DiffusionPipeline.from_pretrained(DIR/protected)`` loads a protected folder offline.
"""

from privaudit.plugins.mitigations.prompted import pipeline as _pipeline  # noqa: F401 (registers with diffusers)
from privaudit.plugins.mitigations.prompted.attn_rescale import AttnRescale
from privaudit.plugins.mitigations.prompted.caption_noise import CaptionNoise
from privaudit.plugins.mitigations.prompted.cfg_delay import CfgDelay
from privaudit.plugins.mitigations.prompted.embed_min import EmbedMin

__all__ = ["AttnRescale", "CaptionNoise", "CfgDelay", "EmbedMin"]
