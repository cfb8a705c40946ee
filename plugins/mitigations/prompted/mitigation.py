"""``PromptMitigation``: what the text-to-image mitigations share (one rule each, ``caption_noise.py``,
``cfg_delay.py``, ``embed_min.py``, ``attn_rescale.py``).

``apply``:

1. refuse a model that is not a text-conditional latent pipeline (one line), or one whose
   conditioning the rule cannot act on;
2. calibrate the gate (``gate.py``) on never-trained-on captions: ``ctx.reference``'s (``privaudit
   mitigate`` sets a seeded quarter of the holdout aside when no ``--reference`` is given), else the
   holdout's; the threshold is their scores' ``1 - gate_fpr`` quantile. With ``gated=False`` the
   rule acts on every prompt;
3. save ``DIR/protected`` (a ``PromptMitigatedPipeline``: the raw components, the rule and the gate
   in ``model_index.json``, a README model card) atomically and load it back: what is audited is
   what ships.

``sweep``: every setting of the method's grid (``sweep_settings``), each gated and ungated (families
``METHOD (gated)`` and ``METHOD (ungated)``), so the frontier shows what gating buys: quality on the
prompts that were never memorised, against protection lost on the memorised prompts the gate misses.

Threat model: black box (the served images). The folder ships the raw network untouched: gray-box
and white-box numbers are the raw model's unless the rule changes the network call (``attn-rescale``),
and anyone holding the weights can sample without the rule.
"""

from __future__ import annotations

from typing import Any, ClassVar

from privaudit.api import InputError, Mitigation, MitigationOutput, Variant
from privaudit.model.latent import latent_of
from privaudit.plugins.mitigations.prompted.gate import PromptGate, calibrate
from privaudit.plugins.mitigations.prompted.rule import RULES, PromptRule

GATE_LIMIT = ("Gated: a prompt that scores below the gate (a paraphrase, a perturbed embedding) is sampled without "
              "the rule; the adaptive attacks (prompt-copy-paraphrase, prompt-copy-embed) measure what that concedes.")


class PromptMitigation(Mitigation):
    """Base of the sampling-time text mitigations: a rule (``rule.py``) behind a prompt gate (``gate.py``)."""

    threat_model = "black-box"
    models: ClassVar[tuple[str, ...]] = ("text",)
    carries = ""  # the rule and the gate's threshold, in model_index.json
    cost: ClassVar[str] = ""  # the sampling cost in words (model card, details)
    gated: bool
    gate_fpr: float
    gate_seeds: int
    gate_signal: str

    def rule_params(self) -> dict[str, Any]:
        """The rule's parameters at the plugin's own setting."""
        raise NotImplementedError

    def sweep_settings(self) -> list[dict[str, Any]]:
        """The rule parameters the sweep audits (each gated and ungated)."""
        raise NotImplementedError

    def check_model(self, ctx) -> None:
        """Refuse a model the rule cannot act on (one line); every text-conditional latent model by default."""

    # ------------------------------------------------------------------ apply
    def apply(self, ctx) -> MitigationOutput:
        from privaudit.plugins.mitigations.memberbank import save_and_load
        from privaudit.plugins.mitigations.prompted.pipeline import PromptMitigatedPipeline

        self.validate()
        lat = latent_of(ctx.denoiser)
        if lat is None:
            raise InputError(f"{ctx.model_dir}: {self.name} protects text-to-image (latent, prompt-conditioned) "
                             "pipelines; this model takes no prompts")
        self.check_model(ctx)
        unseen_set = ctx.reference if ctx.reference is not None and ctx.reference.captions else ctx.holdout
        if not unseen_set.captions or not ctx.members.captions:
            raise InputError(f"{unseen_set.source}: {self.name} calibrates its prompt gate on captions; the member and "
                             "holdout folders need them (metadata.jsonl or metadata.csv with a text column)")
        self.calibration_ = calibrate(lat, unseen=list(unseen_set.captions), members=list(ctx.members.captions),
                                      fpr=self.gate_fpr, n_seeds=self.gate_seeds, seed=ctx.seed,
                                      signal=self.gate_signal)
        self.calibration_["captions_from"] = ("reference" if unseen_set is ctx.reference else "holdout")
        rule = RULES[self.name](**self.rule_params())  # after calibration: a rule may use the threshold
        gate = self._gate(self.gated, ctx)
        pipe = PromptMitigatedPipeline.from_text_pipeline(ctx.pipeline, method=self.name, params=rule.params, gate=gate)
        folder, denoiser = save_and_load(ctx, pipe, card=self._card(rule, gate))
        warnings = []
        if self.calibration_["member_flag_rate"] is not None and self.calibration_["member_flag_rate"] < 0.5:
            warnings.append(f"the prompt gate flags only {self.calibration_['member_flag_rate']:.0%} of the member "
                            f"captions at {self.gate_fpr:.0%} false positives on unseen captions: gated settings leave "
                            "the rest of the members' prompts unmitigated")
        details = {"method": self.name, "rule": rule.params, "gate": {"gated": gate.gated, **self.calibration_},
                   "sampling_cost": self.cost, "carries": "nothing besides the raw model: the rule and the gate "
                                                          "threshold are settings in model_index.json"}
        return MitigationOutput(
            protected_dir=folder, denoiser=denoiser, params=self.get_params(), details=details,
            details_title=f"{self.name}: the rule and its prompt gate", warnings=warnings, probe=_gate_probe(denoiser),
            limits=["Sampling-time only: the folder ships the raw network, so anyone holding the weights samples "
                    "without the rule (gray-box and white-box numbers are the raw model's unless the rule changes "
                    "the network call).", GATE_LIMIT, f"Sampling cost: {self.cost}"])

    def _gate(self, gated: bool, ctx) -> PromptGate:
        return PromptGate(threshold=self.calibration_["threshold"] if gated else None, n_seeds=self.gate_seeds,
                          seed=ctx.seed, signal=self.gate_signal)

    def sweep(self, ctx, output) -> list:
        from privaudit.plugins.mitigations.prompted.denoiser import MitigatedTextDenoiser

        base = output.denoiser.inner()
        out = []
        for params in self.sweep_settings():
            rule = RULES[self.name](**params)
            for gated in (True, False):
                den = MitigatedTextDenoiser(base=base, rule=rule, gate=self._gate(gated, ctx))
                how = "gated" if gated else "ungated"
                out.append(Variant(name=f"{self.name} {rule.describe()} {how}", family=f"{self.name} ({how})",
                                   role="main", params={**params, "gated": gated}, denoiser=den,
                                   probe=_gate_probe(den),
                                   description=f"{self.name} ({rule.describe()}), {den.gate.describe()}"))
        return out

    def _card(self, rule: PromptRule, gate: PromptGate) -> str:
        return f"""# Text-to-image pipeline served with `{self.name}` (written by privaudit)

Components: the original model's, untouched (`unet`, `vae`, `text_encoder`, `tokenizer`, `scheduler`).
Sampling rule: {type(self).__doc__} ({rule.describe()}); {gate.describe()}.
Sampling cost: {self.cost}.

The raw network ships as it was trained: anyone holding this folder can sample without the rule. Serve
images from it; the protection holds for the served images only.

```python
import privaudit.plugins.mitigations.prompted  # registers PromptMitigatedPipeline
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("path/to/protected")
images = pipe(["a prompt"], num_images_per_prompt=4).images
```

Audit it like any model: `privaudit scan path/to/protected --members ... --holdout ...`.
"""


def _gate_probe(den):
    """Metrics on a served draw: the share of its prompt rows the gate mitigated."""
    def probe(samples) -> dict:
        s = den.stats()
        return {"gate_rate": s["gate_rate"]}
    return probe
