"""Step 1 of the flow, the target: load a diffusers folder offline (``target``) as a ``Denoiser``
(``denoiser``), with its latent (``latent``), family (``families``) and flow-matching (``flow``)
conversions into one noise convention, and keyed random draws (``noise``). Imports: stats, io.
"""
