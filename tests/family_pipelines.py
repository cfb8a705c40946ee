"""Tiny random-weight pipelines of every latent family, built offline from configs (nothing downloaded).

Each reuses the digits-text fixture's trained VAE (8x8x1 pixels <-> 4x4x4 latents) and CLIP
tokenizer, so the family's own parts are what differ: SDXL (two CLIP encoders, pooled
embeddings, size ids), DiT (class labels, learned variance), PixArt (T5 with an attention mask,
learned variance), SD3 (two CLIP encoders with projections, no T5, flow matching), Flux (CLIP pooled
+ T5, packed latents, embedded guidance, flow matching). Data: small
captioned subsets of the digits-text members and holdout; DiT's carry the digit class as ``label``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from privaudit.fixtures.digits_text import NUMBER_WORDS

FAMILIES = ("sdxl", "dit", "pixart", "sd3", "flux")


def _clip(cls_name: str, tokenizer, *, seed: int, hidden: int = 32, projection: int = 32):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      max_position_embeddings=tokenizer.model_max_length, projection_dim=projection,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.eos_token_id)
    return getattr(transformers, cls_name)(cfg).eval()


def _t5_tokenizer(words: list[str]):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(sorted(set(words)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # a word-level fast tokenizer standing in for T5's sentencepiece one (same interface, saved as tokenizer.json)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=16)


def _t5(text_target: Path):
    """A one-layer T5 encoder and a word-level tokenizer over the fixture's caption words."""
    from transformers import T5Config, T5EncoderModel

    captions = [json.loads(line)["text"] for d in ("members", "holdout")
                for line in (text_target / d / "metadata.jsonl").read_text().splitlines()]
    tok = _t5_tokenizer([w for c in captions for w in c.replace(",", " ").split()])
    return tok, T5EncoderModel(T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
                                        decoder_start_token_id=0)).eval()


def _subset(src: Path, dst: Path, n: int, *, labels: bool) -> None:
    """The first ``n`` captioned images of ``src``; with ``labels``, metadata carries the digit class."""
    dst.mkdir(parents=True)
    rows = [json.loads(line) for line in (src / "metadata.jsonl").read_text().splitlines()[:n]]
    for r in rows:
        shutil.copy(src / r["file_name"], dst / r["file_name"])
        if labels:  # "a handwritten digit seven, sample kavo" -> 7
            r = {"file_name": r["file_name"], "label": str(NUMBER_WORDS.index(r["text"].split()[3].rstrip(",")))}
        (dst / "metadata.jsonl").open("a").write(json.dumps(r) + "\n")


def build(family: str, text_target: Path, out: Path) -> Path:
    """``out``/model (the pipeline), ``out``/members and ``out``/holdout; returns ``out``."""
    import diffusers
    from transformers import CLIPTokenizer

    model_dir = text_target / "model"
    vae = diffusers.AutoencoderKL.from_pretrained(model_dir / "vae")
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
    ddpm = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, clip_sample=False)
    torch.manual_seed(0)
    if family == "sdxl":
        unet = diffusers.UNet2DConditionModel(
            sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8, addition_embed_type="text_time",
            addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8)
        pipe = diffusers.StableDiffusionXLPipeline(
            vae=vae, text_encoder=_clip("CLIPTextModel", tokenizer, seed=1), tokenizer=tokenizer,
            text_encoder_2=_clip("CLIPTextModelWithProjection", tokenizer, seed=2), tokenizer_2=tokenizer, unet=unet,
            scheduler=ddpm)
    elif family == "dit":
        net = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                              num_layers=1, sample_size=4, patch_size=2, num_embeds_ada_norm=10,
                                              norm_type="ada_norm_zero")
        pipe = diffusers.DiTPipeline(transformer=net, vae=vae, scheduler=ddpm,
                                     id2label={i: w for i, w in enumerate(NUMBER_WORDS)})
    elif family == "pixart":
        t5_tok, t5 = _t5(text_target)
        net = diffusers.PixArtTransformer2DModel(sample_size=4, num_layers=1, patch_size=2, attention_head_dim=8,
                                                 num_attention_heads=2, in_channels=4, out_channels=8,
                                                 cross_attention_dim=16, caption_channels=32, norm_num_groups=8,
                                                 norm_type="ada_norm_single", num_embeds_ada_norm=1000)
        pipe = diffusers.PixArtAlphaPipeline(tokenizer=t5_tok, text_encoder=t5, vae=vae, transformer=net, scheduler=ddpm)
    elif family == "sd3":
        net = diffusers.SD3Transformer2DModel(sample_size=4, patch_size=1, in_channels=4, num_layers=1,
                                              attention_head_dim=8, num_attention_heads=2, joint_attention_dim=64,
                                              caption_projection_dim=16, pooled_projection_dim=64, out_channels=4)
        pipe = diffusers.StableDiffusion3Pipeline(
            transformer=net, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae,
            text_encoder=_clip("CLIPTextModelWithProjection", tokenizer, seed=1), tokenizer=tokenizer,
            text_encoder_2=_clip("CLIPTextModelWithProjection", tokenizer, seed=2), tokenizer_2=tokenizer,
            text_encoder_3=None, tokenizer_3=None)
    elif family == "flux":
        t5_tok, t5 = _t5(text_target)
        net = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1,
                                               attention_head_dim=8, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(2, 2, 4))
        pipe = diffusers.FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae,
                                      text_encoder=_clip("CLIPTextModel", tokenizer, seed=1), tokenizer=tokenizer,
                                      text_encoder_2=t5, tokenizer_2=t5_tok, transformer=net)
    else:
        raise ValueError(family)
    pipe.save_pretrained(out / "model", safe_serialization=True)
    for split, n in (("members", 12), ("holdout", 16)):
        _subset(text_target / split, out / split, n, labels=family == "dit")
    return out
