"""An example third-party privaudit plugin package, registered through an entry point.

A real package declares, in its pyproject.toml::

    [project.entry-points."privaudit.plugins"]
    brightness = "privaudit_example:BrightnessAttack"

The tests install it by writing that entry point into a ``.dist-info`` folder on sys.path, and
check it against the plugin contract the way a third-party package would in its own tests::

    from privaudit.testing import check_plugin
    check_plugin(BrightnessAttack)
"""

from __future__ import annotations

import torch

from privaudit.api import Interval, MembershipAttack


class BrightnessAttack(MembershipAttack):
    """A model-free toy attack: mean brightness. Shows the plugin path, not a real attack."""

    name = "brightness"
    id = "EXAMPLE-001"
    threat_model = "black-box"
    references = ("privaudit test suite",)
    parameter_constraints = {"sign": [Interval(float, None, None)]}  # any finite number; checked before work

    def __init__(self, *, sign: float = 1.0):
        self.sign = sign

    def score(self, denoiser, x0: torch.Tensor, *, noise) -> torch.Tensor:
        return self.sign * x0.flatten(1).mean(1)
