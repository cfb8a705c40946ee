"""Step 5 of the flow, mitigate: audit before, apply a ``Mitigation`` plugin, audit the protected
model again (``flow``); the numbers compared across variants (``summary``), the protected model's
verdict by threat model (``verdict``) and the privacy/quality frontier of a sweep (``frontier``).
Imports: audit and everything below it; never cli.
"""
