"""Flamingo (Alayrac et al. 2022): a frozen vision encoder and a frozen language model, joined by a Perceiver
Resampler and tanh-gated cross-attention layers, trained on interleaved images and text. Introduced in notebook 05.

    images --vision (frozen)--> grid features [B, M, N, Dv] --resampler (trained)--> R tokens per image [B, M, R, Dv]
                                                                                               |  cross-attention
    "<image>Output: a red star<|endofchunk|><image>Question: ..." --> frozen LM, a GATED XATTN-DENSE layer (trained)
                                                                      in front of its blocks --> next tokens

- the **Perceiver Resampler**: R learned latents cross-attend to an image's grid features, the latents themselves
  among the keys -> R visual tokens, however many grid features (or frames) the image has;
- a **GATED XATTN-DENSE** layer: x += tanh(a_attn) * cross_attention(x, visual tokens); x += tanh(a_ff) * ff(x), with
  a_attn = a_ff = 0 at the start, so the model begins as exactly the frozen LM;
- **interleaving**: each text token cross-attends only to the visual tokens of the most recent `<image>` before it
  (`media_index`, `cross_attention_mask`); before the first image a token sees no image and the layer adds nothing.

The gated layers enter the frozen LM through forward pre-hooks on its blocks, registered for one forward call at a
time: the LM's code and weights stay as they are, and one LM can serve several models (the notebook's ablations).
"""

from __future__ import annotations

import random
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..attention import MultiHeadAttention
from ..data.evalsets import SceneBench
from ..data.language import END_OF_CHUNK, IMAGE_TOKEN, sample_vqa, shot
from ..data.loaders import TextBatch, length_buckets
from ..data.shapes import Scene
from ..frozen import TowerAndLM
from ..harness import suite
from ..lm import LanguageModel, load_language_model
from ..nn import MLP, LMOutput
from ..params import SavedConfig, require, require_positive_ints
from ..protocols import caption_loss
from ..unimodal import vision_tower

STYLES = ("gpt", "llama")  # the gated layer's norm and feed-forward: LayerNorm + GELU MLP, or RMSNorm + SwiGLU (Idefics)
PROMPT_FORMAT = {"caption": f"{IMAGE_TOKEN}Output:", "vqa": f"{IMAGE_TOKEN}Question: {{}} Answer:"}

# ---------------------------------------------------------------- the Perceiver Resampler


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """The resampler's feed-forward: LayerNorm -> Linear -> GELU -> Linear, no biases (Flamingo's, open_flamingo's)."""
    return nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * mult, bias=False), nn.GELU(),
                         nn.Linear(dim * mult, dim, bias=False))


class PerceiverAttention(nn.Module):
    """The latents' queries over the image's features AND the latents: [B, N, D], [B, R, D] -> [B, R, D].
    Introduced in notebook 05."""

    def __init__(self, dim: int, n_heads: int):
        super().__init__()
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, n_heads, bias=False)

    def forward(self, media: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = self.norm_latents(latents)
        keys = torch.cat([self.norm_media(media), latents], dim=1)  # [B, N + R, D]: the latents are keys too
        return self.attn(latents, context=keys)  # [B, R, D]


class PerceiverResampler(nn.Module):
    """R learned latents read an image's grid features (plus a learned embedding per frame) through `depth` blocks
    of PerceiverAttention and a feed-forward: [B, N, D] or [B, F, N, D] (F frames) -> [B, R, D], whatever N and F.
    Introduced in notebook 05."""

    def __init__(self, dim: int, depth: int = 2, n_latents: int = 8, n_heads: int = 4, max_frames: int = 1,
                 ff_mult: int = 4):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(n_latents, dim))
        self.time = nn.Parameter(torch.randn(max_frames, 1, dim) * 0.02)  # [F, 1, D] one vector per frame
        self.layers = nn.ModuleList(nn.ModuleList([PerceiverAttention(dim, n_heads), feed_forward(dim, ff_mult)])
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features[:, None] if features.ndim == 3 else features  # [B, F, N, D]
        require(x.ndim == 4 and x.size(1) <= len(self.time), "features.shape", tuple(features.shape),
                f"[B, N, D] or [B, F, N, D] with F <= {len(self.time)} frames")
        x = (x + self.time[: x.size(1)]).flatten(1, 2)  # [B, F * N, D]
        latents = self.latents.expand(len(x), -1, -1)  # [B, R, D]
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)
            latents = latents + ff(latents)
        return self.norm(latents)


# ---------------------------------------------------------------- the gated cross-attention layer


class SwiGLU(nn.Module):
    """LLaMA's feed-forward: down(silu(gate(x)) * up(x)), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.gate, self.up, self.down = (nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False),
                                         nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(nn.functional.silu(self.gate(x)) * self.up(x))


class GatedCrossAttentionDense(nn.Module):
    """Flamingo's GATED XATTN-DENSE: x [B, T, D] += tanh(a_attn) * cross-attention to the visual tokens [B, S, Dv],
    then += tanh(a_ff) * feed-forward; a_attn = a_ff = 0 at the start. `gate=False` adds both unscaled (the
    ablation). A token whose mask row allows no visual token gets nothing from the cross-attention. Introduced in
    notebook 05."""

    def __init__(self, dim: int, visual_dim: int, n_heads: int, ff_mult: int = 4, style: str = "gpt",
                 gate: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        require(style in STYLES, "style", style, f"one of {STYLES}")
        gpt = style == "gpt"
        norm = nn.LayerNorm if gpt else nn.RMSNorm
        self.norm_attn, self.norm_ff = norm(dim, eps=norm_eps), norm(dim, eps=norm_eps)
        self.attn = MultiHeadAttention(dim, n_heads, bias=gpt, kv_dim=visual_dim)
        self.ff = MLP(dim, dim * ff_mult) if gpt else SwiGLU(dim, dim * ff_mult)
        self.alpha_attn, self.alpha_ff = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
        self.gated = gate

    def gates(self) -> torch.Tensor:
        """[2]: what the cross-attention and the feed-forward are multiplied by (tanh of the alphas, or 1)."""
        alphas = torch.cat([self.alpha_attn, self.alpha_ff])
        return alphas.tanh() if self.gated else torch.ones_like(alphas)

    def forward(self, x: torch.Tensor, visual: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, T, D], visual [B, S, Dv], mask [B, 1, T, S] bool (True = may attend) -> [B, T, D]."""
        gate_attn, gate_ff = self.gates()
        seen = self.attn(self.norm_attn(x), context=visual, mask=mask)  # [B, T, D]; no image yet: zeros, then
        if self.attn.proj.bias is not None:  # the output projection, whose bias must not leak into those rows
            seen = seen.masked_fill(~mask.any(dim=-1).transpose(1, 2), 0.0)
        x = x + gate_attn * seen
        return x + gate_ff * self.ff(self.norm_ff(x))


# ---------------------------------------------------------------- interleaving


def media_index(input_ids: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Which image each token looks at: the number of `<image>` tokens up to and including it (0 = none yet).
    [B, T] -> [B, T]. Introduced in notebook 05."""
    return (input_ids == image_token_id).long().cumsum(dim=1)


def cross_attention_mask(where: torch.Tensor, n_images: int, n_tokens: int) -> torch.Tensor:
    """Token t may attend to visual token j when j belongs to image where[t] (images count from 1; visual tokens
    are n_tokens per image, image after image). where [B, T] -> [B, 1, T, n_images * n_tokens] bool."""
    owner = torch.arange(1, n_images + 1, device=where.device).repeat_interleave(n_tokens)  # [M * R]
    return (where[:, :, None] == owner)[:, None]


# ---------------------------------------------------------------- the model


@dataclass
class Config(SavedConfig):
    """How a Flamingo model is built. The LM and the vision tower are pinned by name and sha256."""

    visual_dim: int = 96  # width of the vision tower's grid features (notebook 02's CLIP image tower)
    n_latents: int = 8  # R: visual tokens per image
    resampler_depth: int = 2
    resampler: bool = True  # False: the gated layers read every grid feature (the ablation)
    n_heads: int = 4  # heads of the resampler's and the gated layers' attention
    ff_mult: int = 4
    xattn_every: int = 1  # a gated layer in front of every block (1), or every other one (2), ...
    style: str = "gpt"  # the gated layers' norm and feed-forward, one of STYLES
    gate: bool = True  # False: no tanh gates (the ablation)
    max_frames: int = 1
    image_token_id: int = 3  # the tokenizer's <image>
    lm: dict = field(default_factory=lambda: {"name": "tiny-lm", "sha256": None})
    vision: dict | None = None  # a `unimodal.vision_tower` spec; None: the features are given

    def __post_init__(self):
        require_positive_ints(self, ("visual_dim", "n_latents", "resampler_depth", "n_heads", "ff_mult", "xattn_every",
                                     "max_frames"))
        require(self.style in STYLES, "style", self.style, f"one of {STYLES}")


class Flamingo(TowerAndLM):
    """A frozen LM with a gated cross-attention layer in front of every `xattn_every`-th block, reading the visual
    tokens a trained Perceiver Resampler makes of a frozen vision tower's grid features. Only the resampler and the
    gated layers train. Introduced in notebook 05.

    A Captioner (`vlmlab.protocols`): `condition(features)` resamples [B, N, Dv] (one image per row) or [B, M, N, Dv]
    (M images per row, in the order of the text's <image> tokens) into `media` [B, M, R, Dv], which every forward
    call takes; the first call (no cache) must have the input_ids, where the <image> tokens are."""

    prompt_format = PROMPT_FORMAT
    stop_tokens = (END_OF_CHUNK,)  # a chunk's text ends there (or at <eos>)

    def __init__(self, config: Config, lm: LanguageModel | None = None, vision: nn.Module | None = None):
        super().__init__()
        c = self.config = config
        self.lm = lm if lm is not None else load_language_model(config.lm)
        self.resampler = (PerceiverResampler(c.visual_dim, c.resampler_depth, c.n_latents, c.n_heads, c.max_frames,
                                             c.ff_mult) if c.resampler else None)
        self.where = [i for i in range(self.lm.n_layers) if i % c.xattn_every == 0]  # the blocks with a layer in front
        self.gated = nn.ModuleList(GatedCrossAttentionDense(self.lm.dim, c.visual_dim, c.n_heads, c.ff_mult, c.style, c.gate)
                                   for _ in self.where)
        self.vision = vision if vision is not None or c.vision is None else vision_tower(c.vision)
        self.hold(("lm", "vision"))

    @classmethod
    def from_config(cls, config: dict) -> Flamingo:
        """Rebuilt from the config a checkpoint keeps (`vlmlab.zoo.load_model`)."""
        return cls(Config(**config))

    @property
    def max_text_len(self) -> int:
        return self.lm.max_len

    def gate_values(self) -> torch.Tensor:
        """[layers, 2]: each gated layer's multipliers of its cross-attention and its feed-forward."""
        return torch.stack([layer.gates() for layer in self.gated]).detach()

    def condition(self, image_features: torch.Tensor) -> dict[str, torch.Tensor]:
        """image_features [B, N, Dv] or [B, M, N, Dv] -> {"media": [B, M, R, Dv]} (R = N without a resampler)."""
        x = image_features[:, None] if image_features.ndim == 3 else image_features  # [B, M, N, Dv]
        require(x.ndim == 4 and x.size(-1) == self.config.visual_dim, "image_features.shape", tuple(image_features.shape),
                f"[B, N, {self.config.visual_dim}] or [B, M, N, {self.config.visual_dim}]")
        if self.resampler is None:
            return {"media": x}
        B, M = x.shape[:2]
        return {"media": self.resampler(x.flatten(0, 1)).view(B, M, -1, x.size(-1))}

    def forward(self, *, media: torch.Tensor, input_ids=None, inputs_embeds=None, attention_mask: torch.Tensor,
                labels=None, cache=None, use_cache: bool = False) -> LMOutput:
        """The LM's output, each token having cross-attended to its most recent image. Without a cache the input_ids
        say where the images are; with one, the new tokens follow the prompt and look at its last image."""
        B, M, R = media.shape[:3]
        if cache is None:
            require(input_ids is not None, "input_ids", None, "the prompt's ids: Flamingo finds its images at <image>")
            where = media_index(input_ids, self.config.image_token_id)  # [B, T]
            require(int(where.max()) <= M, "input_ids", f"{int(where.max())} <image> tokens in a row", f"at most {M}")
            require(not use_cache or bool((where[:, -1] == M).all()), "input_ids", "a prompt with fewer images than media",
                    f"every prompt showing all {M} of its images before decoding")
        else:
            T = (input_ids if inputs_embeds is None else inputs_embeds).size(1)
            where = torch.full((B, T), M, device=media.device)
        with self.inserted(media.flatten(1, 2), cross_attention_mask(where, M, R)):
            return self.lm(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                           labels=labels, cache=cache, use_cache=use_cache)

    @contextmanager
    def inserted(self, visual: torch.Tensor, mask: torch.Tensor):
        """While inside, each gated layer runs on the hidden states just before its LM block reads them."""

        def before(layer):
            return lambda block, args, kwargs: ((layer(args[0], visual, mask), *args[1:]), kwargs)

        handles = [self.lm.blocks[i].register_forward_pre_hook(before(layer), with_kwargs=True)
                   for i, layer in zip(self.where, self.gated)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


# ---------------------------------------------------------------- Hugging Face's re-implementation (Idefics)


def from_hf_resampler(hf) -> PerceiverResampler:
    """Copy a `transformers` IdeficsPerceiverResampler into ours (the time embeddings zero: Idefics has none). The
    one documented difference: Idefics's feed-forward uses ReLU where Flamingo's uses GELU, so only a resampler
    whose `act` was set to GELU converts to the same function. Notebook 05's parity test."""
    require(not hf.qk_layer_norms and hf.n_heads * hf.head_dim == hf.embed_dim, "hf", "qk norms or a wider inner dim",
            "qk_layer_norms_perceiver=False and n_heads * head_dim == embed_dim")
    require(all(isinstance(ff.act, nn.GELU) for _, ff in hf.blocks), "hf", "a ReLU feed-forward", "act set to GELU")
    ours = PerceiverResampler(hf.embed_dim, len(hf.blocks), hf.n_latents, hf.n_heads, 1, hf.intermediate_dim // hf.embed_dim)
    state = {"latents": hf.latents, "time": torch.zeros_like(ours.time), "norm.weight": hf.layer_norm.weight,
             "norm.bias": hf.layer_norm.bias}
    for i, (attn, ff) in enumerate(hf.blocks):
        state |= {f"layers.{i}.0.norm_media.{k}": v for k, v in attn.context_layer_norm.state_dict().items()}
        state |= {f"layers.{i}.0.norm_latents.{k}": v for k, v in attn.latents_layer_norm.state_dict().items()}
        state |= {f"layers.{i}.0.attn.q.weight": attn.q_proj.weight, f"layers.{i}.0.attn.proj.weight": attn.output_proj.weight,
                  f"layers.{i}.0.attn.kv.weight": torch.cat([attn.k_proj.weight, attn.v_proj.weight])}
        state |= {f"layers.{i}.1.0.{k}": v for k, v in ff.ln.state_dict().items()}
        state |= {f"layers.{i}.1.1.weight": ff.fc.weight, f"layers.{i}.1.3.weight": ff.c_proj.weight}
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return ours


def from_hf_gated_layer(hf) -> GatedCrossAttentionDense:
    """Copy a `transformers` IdeficsGatedCrossAttentionLayer (scalar alphas, no qk norms) into ours, "llama" style:
    RMSNorm, SwiGLU, no biases. Notebook 05's parity test."""
    attn = hf.cross_attn
    require(not attn.qk_layer_norms and hf.alpha_cross_attn.numel() == 1, "hf", "qk norms or vector alphas",
            "qk_layer_norms=False and alpha_type='float'")
    dim, visual_dim, hidden = attn.hidden_size, attn.k_proj.in_features, hf.mlp.gate_proj.out_features
    ours = GatedCrossAttentionDense(dim, visual_dim, attn.num_heads, hidden // dim, "llama",
                                    norm_eps=hf.input_layernorm.variance_epsilon)
    state = {"norm_attn.weight": hf.input_layernorm.weight, "norm_ff.weight": hf.post_attention_layernorm.weight,
             "attn.q.weight": attn.q_proj.weight, "attn.kv.weight": torch.cat([attn.k_proj.weight, attn.v_proj.weight]),
             "attn.proj.weight": attn.o_proj.weight, "ff.gate.weight": hf.mlp.gate_proj.weight,
             "ff.up.weight": hf.mlp.up_proj.weight, "ff.down.weight": hf.mlp.down_proj.weight,
             "alpha_attn": hf.alpha_cross_attn, "alpha_ff": hf.alpha_dense}
    ours.load_state_dict({k: v.detach().clone() for k, v in state.items()})
    return ours


batch_loss = caption_loss  # the LM loss on the interleaved text, image_features [B, M, N, Dv] in the batch


# ---------------------------------------------------------------- interleaved data


def interleaved_sequences(scenes: list[Scene], n: int, seed: int = 0, max_images: int = 4) -> list[tuple[str, list[int]]]:
    """n training sequences of 1..max_images scenes drawn at random: (text, the scenes' indices in order). A sequence
    is all captions or all questions (one of the scene's at random), chunks as `language.shot` writes them, each
    closed by <|endofchunk|> but the last, which the encoder's <eos> ends (notebook 01's interleaved documents)."""
    rng = random.Random(f"flamingo:{seed}")
    out = []
    for _ in range(n):
        picked = [rng.randrange(len(scenes)) for _ in range(rng.randint(1, max_images))]
        task = rng.choice(("caption", "vqa"))
        chunks = [shot(scenes[i], task, rng.choice(sample_vqa(scenes[i], 3, salt="flamingo")) if task == "vqa" else None)
                  for i in picked]
        out.append((END_OF_CHUNK.join(f"{p} {t}" for p, t in chunks), picked))
    return out


def interleaved_collate(features: torch.Tensor, text: TextBatch, images: torch.Tensor, buckets: int = 1):
    """Collate sequence indices: image_features [B, max_images, N, Dv] gathered from features [S, N, Dv] by
    images [n, max_images] (-1 = no image: zeros, which no token looks at), and the tokenised text trimmed to the
    longest row. With buckets > 1 the batch comes cut into that many groups of similar length (at most one per
    sequence), each trimmed to its own longest row (`loaders.length_buckets`; `protocols.caption_loss` weighs them
    back together). Notebook 05."""
    lengths = text.attention_mask.sum(dim=1)

    def rows(idx: torch.Tensor) -> dict:
        which = images[idx]  # [B, max_images]
        width = int(lengths[idx].max())
        return {"image_features": features[which.clamp(min=0)] * (which >= 0)[..., None, None],  # [B, max_images, N, Dv]
                "index": idx, "input_ids": text.input_ids[idx, :width], "attention_mask": text.attention_mask[idx, :width],
                "labels": text.labels[idx, :width]}

    def collate(indices: list[int]) -> dict:
        idx = torch.tensor(indices)
        if buckets == 1:
            return rows(idx)
        return {"buckets": [rows(group) for group in length_buckets(idx, lengths, min(buckets, len(idx)))]}

    return collate


def pad_images(sequences: list[tuple[str, list[int]]], max_images: int = 4) -> torch.Tensor:
    """The scene indices of each sequence, padded with -1: [n, max_images]."""
    return torch.tensor([picked + [-1] * (max_images - len(picked)) for _, picked in sequences])


def fewshot_prompts(support: list[list[Scene]], task: str, query_texts: list[str] | None = None,
                    seed: int = 0) -> list[str]:
    """One interleaved prompt per query: its support scenes as closed chunks (a random question of each for "vqa"),
    then the query's open chunk (the caption prompt, or the query's question from query_texts). Notebook 05."""
    rng = random.Random(f"fewshot:{seed}")
    out = []
    for i, scenes in enumerate(support):
        shots = "".join(f"{p} {t}{END_OF_CHUNK}" for p, t in
                        (shot(s, task, rng.choice(sample_vqa(s, 3, salt="flamingo")) if task == "vqa" else None)
                         for s in scenes))
        query = PROMPT_FORMAT[task].format(query_texts[i]) if task == "vqa" else PROMPT_FORMAT[task]
        out.append(shots + query)
    return out


def measure(model: Flamingo, tokenizer, bench: SceneBench, novel: list[int] | None = None) -> dict[str, float]:
    """Notebook 05's zero-shot numbers: greedy captions and answers in Flamingo's prompt format (`harness.suite`)."""
    return suite(model, tokenizer, "captioner", bench, novel) | suite(model, tokenizer, "vqa", bench, novel)


SAVED = ("flamingo-shapes",)  # what notebook 05 saves: its main model (resampler and gated layers)
TARGETS = {  # notebook 05's quality targets, on held-out scenes
    "smoke": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80), "init_logits_max_diff": ("<=", 0.0)},  # shipped
    "cpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80), "init_logits_max_diff": ("<=", 0.0)},
    "gpu": {"caption_f1": (">=", 0.85), "vqa_acc": (">=", 0.80), "init_logits_max_diff": ("<=", 0.0)},
}
