"""PrefixLM (SimVLM, Wang et al. 2022): image tokens and a text prefix go into ONE transformer that reads the
prefix both ways and writes the continuation one token at a time. Introduced in notebook 03.

    sequence   [ image tokens (N) | <bos> prefix text | continuation <eos> | pad ]
    attention  bidirectional over the first N + len(prefix) positions, causal after them
    loss       next-token cross-entropy on the continuation only

One model does several tasks by choosing the prefix: an empty prefix is captioning, a question is VQA, "a
large red" is caption completion. SimVLM trains with a random split point: any first part of a caption can be
the prefix. The image tokens here are region tokens (`unimodal.RegionEncoder`): notebook 01's
locked ViT and cell probe, one vector per grid cell, computed once; a linear layer maps them to the language
model's width.

VirTex (Desai & Johnson 2021), the contrast drawn in notebook 03, keeps the image OUT of the sequence: a
causal text decoder cross-attends to the image features in every block, and the text never sees itself
bidirectionally. `VirTex` below is that design with the same parts.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .. import zoo
from ..data.evalsets import generation_scenes, images_of, vqa_questions
from ..data.language import QA
from ..data.loaders import IGNORE_INDEX, TextBatch, encode_texts
from ..data.shapes import Scene
from ..evaluate import caption_scores, vqa_accuracy
from ..generation import generate
from ..nn import CausalLM, LMOutput, TextConfig
from ..params import require

# The question itself is the VQA prefix: it ends in "?", which is all the model needs to know it must answer.
# (Our tokenizer learned Shapes World text only; "question:" and " answer:" would cost it 6 tokens each.)
VQA_PROMPT = "{}"


@dataclass
class PrefixLMConfig:
    vocab_size: int = 512
    vision_dim: int = 20  # width of the image tokens (region tokens: 8 shape + 9 colour + 3 size scores)
    n_image_tokens: int = 9  # one per cell of the 3 x 3 grid
    text_len: int = 32  # the longest text (prefix + continuation) in tokens
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self):
        for name in ("vocab_size", "vision_dim", "n_image_tokens", "text_len", "dim", "depth", "n_heads"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")

    def text_config(self, **changes) -> TextConfig:
        """The transformer's TextConfig: one position table for image tokens and text together."""
        return TextConfig(vocab_size=self.vocab_size, max_len=self.n_image_tokens + self.text_len, dim=self.dim,
                          depth=self.depth, n_heads=self.n_heads, dropout=self.dropout, causal=True, **changes)


class PrefixLM(nn.Module):
    """A causal LM whose input starts with image tokens, and whose forward takes `prefix_len`.
    Introduced in notebook 03."""

    def __init__(self, config: PrefixLMConfig):
        super().__init__()
        self.config = config
        self.visual = nn.Linear(config.vision_dim, config.dim)  # image features -> the LM's width
        self.lm = CausalLM(config.text_config())

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)  # [B, T, D]

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, vision_dim] -> [B, N, D]; their positions are added with the text's, from one table."""
        n = self.config.n_image_tokens
        require(features.ndim == 3 and features.shape[1:] == (n, self.config.vision_dim), "features.shape",
                tuple(features.shape), f"[B, {n}, {self.config.vision_dim}]")
        return self.visual(features)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None, past_key_values=None,
                use_cache: bool = False, prefix_len: int | torch.Tensor | None = None) -> LMOutput:
        return self.lm(input_ids, inputs_embeds, attention_mask, labels, past_key_values, use_cache, prefix_len=prefix_len)


def from_text_lm(config: PrefixLMConfig, text_lm: CausalLM) -> PrefixLM:
    """A PrefixLM that starts from a language model trained on text alone (SimVLM's text-only first stage):
    token embeddings, blocks and final norm are copied, and the text model's position table is copied to
    the positions the text takes after the image tokens. The image projection and the image positions
    start fresh. Introduced in notebook 03."""
    src = text_lm.config
    shape = (src.vocab_size, src.dim, src.depth, src.n_heads)
    require(shape == (config.vocab_size, config.dim, config.depth, config.n_heads), "text_lm.config", shape,
            "the PrefixLM's (vocab_size, dim, depth, n_heads)")
    model = PrefixLM(config)
    state = {k: v for k, v in text_lm.state_dict().items() if k != "transformer.pos_emb.weight"}
    missing, unexpected = model.lm.load_state_dict(state, strict=False)
    require(missing == ["transformer.pos_emb.weight"] and not unexpected, "text_lm", "a CausalLM with other weights",
            "a vlmlab.nn.CausalLM of the same shape")
    n, length = config.n_image_tokens, min(src.max_len, config.text_len)
    with torch.no_grad():
        model.lm.transformer.pos_emb.weight[n : n + length] = text_lm.transformer.pos_emb.weight[:length]
    return model


# ---------------------------------------------------------------- data: what the prefix is


def split_caption(caption: str, rng: random.Random) -> tuple[str, str]:
    """SimVLM's random split at a word boundary: (prefix, continuation). The prefix may be empty (plain
    captioning); the continuation always keeps at least one word. Introduced in notebook 03."""
    words = caption.split(" ")
    k = rng.randrange(len(words))  # words in the prefix: 0 .. len - 1
    return " ".join(words[:k]), (" " if k else "") + " ".join(words[k:])


def training_texts(captions: list[str], qas: list[QA], seed: int = 0, split_prob: float = 0.5) -> tuple[list[str], list[str]]:
    """(prompts, targets) for a PrefixLM: each caption, with probability split_prob split at a random word
    (caption completion) and otherwise whole (captioning), followed by each question as a VQA prefix."""
    rng = random.Random(seed)
    prompts, targets = [], []
    for text in captions:
        prompt, target = split_caption(text, rng) if rng.random() < split_prob else ("", text)
        prompts.append(prompt)
        targets.append(target)
    prompts += [VQA_PROMPT.format(qa.question) for qa in qas]
    targets += [" " + qa.answer for qa in qas]
    return prompts, targets


def prefix_lengths(text: TextBatch, n_image_tokens: int) -> torch.Tensor:
    """[B] the prefix of each row: the image tokens plus the text tokens that take no loss before the first
    target token (<bos> and the prompt)."""
    has_target = text.labels != IGNORE_INDEX  # [B, T]
    require(bool(has_target.any(dim=1).all()), "labels", "a row with no target token", "at least one target per row")
    return n_image_tokens + has_target.int().argmax(dim=1)


def join(model: PrefixLM, features: torch.Tensor, text: TextBatch) -> dict[str, torch.Tensor]:
    """The PrefixLM's inputs for one batch: image tokens in front of the text embeddings, the attention mask,
    labels (-100 on the image) and prefix lengths. Introduced in notebook 03."""
    image = model.embed_image(features)  # [B, N, D]
    B, N = image.shape[:2]
    ones = text.attention_mask.new_ones(B, N)
    return {"inputs_embeds": torch.cat([image, model.embed(text.input_ids)], dim=1),  # [B, N + T, D]
            "attention_mask": torch.cat([ones, text.attention_mask], dim=1),  # [B, N + T]
            "labels": torch.cat([torch.full_like(ones, IGNORE_INDEX), text.labels], dim=1),  # [B, N + T]
            "prefix_len": prefix_lengths(text, N)}  # [B]


def batch_loss(model: PrefixLM, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Next-token loss on the continuation, for `vlmlab.train.fit`. batch: features [B, N, Dv], input_ids,
    attention_mask, labels [B, T]; or {"buckets": [batch, ...]} (`loaders.length_buckets`)."""
    if "buckets" in batch:
        return over_buckets(batch_loss, model, batch["buckets"]), {}
    text = TextBatch(batch["input_ids"], batch["attention_mask"], batch["labels"])
    return model(**join(model, batch["features"], text)).loss, {}


def over_buckets(loss_fn, model: nn.Module, buckets: list[dict]) -> torch.Tensor:
    """The mean token loss of one batch that comes cut into length buckets, each padded only to its own longest
    row: each bucket's mean, weighted by its target tokens. The same number as for the uncut batch, with less
    padding computed (a batch of questions and long captions is mostly padding). Introduced in notebook 03."""
    counts = [int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in buckets]
    return sum(loss_fn(model, b)[0] * n for b, n in zip(buckets, counts)) / sum(counts)


# ---------------------------------------------------------------- VirTex: the image outside the sequence


class VirTex(nn.Module):
    """A causal text decoder that cross-attends to the image features in every block (VirTex). The text is
    the whole sequence: no image tokens, no bidirectional prefix. Introduced in notebook 03."""

    def __init__(self, config: PrefixLMConfig):
        super().__init__()
        self.config = config
        self.visual = nn.Linear(config.vision_dim, config.dim)
        self.lm = CausalLM(TextConfig(vocab_size=config.vocab_size, max_len=config.text_len, dim=config.dim,
                                      depth=config.depth, n_heads=config.n_heads, dropout=config.dropout, causal=True,
                                      cross_attention_dim=config.dim))

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm.embed(input_ids)

    def embed_image(self, features: torch.Tensor) -> torch.Tensor:
        return self.visual(features)  # [B, N, D]: the context, not part of the sequence

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None, past_key_values=None,
                use_cache: bool = False, context: torch.Tensor | None = None) -> LMOutput:
        require(context is not None, "context", None, "the projected image features [B, N, D] (embed_image)")
        return self.lm(input_ids, inputs_embeds, attention_mask, labels, past_key_values, use_cache, context=context)


def virtex_loss(model: VirTex, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """VirTex's captioning loss for `fit`: the same batches as `batch_loss`."""
    if "buckets" in batch:
        return over_buckets(virtex_loss, model, batch["buckets"]), {}
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                context=model.embed_image(batch["features"]))
    return out.loss, {}


# ---------------------------------------------------------------- generation and scoring


class Bound:
    """What `vlmlab.generation.generate` drives: the model with its multimodal arguments bound. `prefix_len`
    makes the whole prompt (image + text prefix) one bidirectional prefix; `context` is repeated for the
    beams of each prompt (row b * K + j of a beam batch belongs to prompt b). Introduced in notebook 03."""

    def __init__(self, model: nn.Module, **bound):
        self.model, self.bound = model, bound

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed(input_ids)

    def __call__(self, **kwargs) -> LMOutput:
        bound = dict(self.bound)
        if "context" in bound:
            rows = kwargs["attention_mask"].size(0)
            bound["context"] = bound["context"].repeat_interleave(rows // bound["context"].size(0), dim=0)
        return self.model(**kwargs, **bound)


def prompt_ids(tokenizer, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """<bos> + prompt, LEFT-padded so every prompt ends in the last column: ids and mask [B, T]."""
    rows = [[tokenizer.bos_token_id] + tokenizer.encode(p) for p in prompts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, row in enumerate(rows):
        ids[k, width - len(row):], mask[k, width - len(row):] = torch.tensor(row), 1
    return ids, mask


@torch.no_grad()
def generate_text(model: PrefixLM | VirTex, tokenizer, features: torch.Tensor, prompts: list[str] | None = None,
                  max_new_tokens: int = 24, batch_size: int = 256, **generate_kwargs) -> list[str]:
    """Continue each prompt (default: "" = caption) about its image: features [B, N, Dv] -> B strings, the
    continuation only. generate_kwargs go to `vlmlab.generation.generate` (strategy, num_beams, use_cache...).
    Introduced in notebook 03."""
    prompts = [""] * len(features) if prompts is None else list(prompts)
    require(len(prompts) == len(features), "prompts", f"{len(prompts)} prompts", f"one per image ({len(features)})")
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(prompts), batch_size):
        feats = features[start : start + batch_size].to(device)
        ids, mask = (t.to(device) for t in prompt_ids(tokenizer, prompts[start : start + batch_size]))
        image = model.embed_image(feats)  # [b, N, D]
        if isinstance(model, VirTex):
            bound, embeds = Bound(model, context=image), model.embed(ids)
        else:  # image tokens first, then the left-padded prompt: padding may sit between them, the mask hides it
            embeds, mask = torch.cat([image, model.embed(ids)], dim=1), torch.cat([mask.new_ones(image.shape[:2]), mask], dim=1)
            bound = Bound(model, prefix_len=embeds.size(1))
        max_len = model.lm.config.max_len
        room = max_len - embeds.size(1)
        require(room > 0, "prompts", f"{embeds.size(1)} positions with the image", f"fewer than max_len={max_len}")
        new = generate(bound, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=min(max_new_tokens, room),
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def continuation_logprob(model: PrefixLM, tokenizer, features: torch.Tensor, prompts: list[str],
                         targets: list[str]) -> torch.Tensor:
    """Summed log-probability of each target (plus <eos>) after its image and prompt: [B]. The caption
    explorer shows it next to each decoded caption. Introduced in notebook 03."""
    model.eval()
    device = next(model.parameters()).device
    text = encode_texts(tokenizer, prompts, targets, max_length=model.config.text_len)
    text = TextBatch(*(t.to(device) for t in (text.input_ids, text.attention_mask, text.labels)))
    inputs = join(model, features.to(device), text)
    labels = inputs.pop("labels")
    logits = model(**inputs).logits[:, :-1].float()  # [B, S - 1, V]: position t scores token t + 1
    targets_ = labels[:, 1:]
    logp = F.log_softmax(logits, dim=-1).gather(-1, targets_.clamp(min=0)[..., None]).squeeze(-1)  # [B, S - 1]
    return (logp * (targets_ != IGNORE_INDEX)).sum(dim=1).cpu()


# ---------------------------------------------------------------- measuring, saving, loading


def measure(model: PrefixLM | VirTex, tokenizer, features: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    """Notebook 03's held-out numbers for image tokens [N, 9, 20] of `scenes`: greedy captions (attribute F1,
    BLEU-4, ROUGE-L, CIDEr) and three greedy VQA answers per scene (accuracy, overall and by type)."""
    captions = generate_text(model, tokenizer, features)
    out = {f"caption_{k}": v for k, v in caption_scores(captions, scenes).items()}
    index, qas = vqa_questions(scenes, k=3)
    answers = generate_text(model, tokenizer, features[index], [VQA_PROMPT.format(qa.question) for qa in qas], max_new_tokens=8)
    vqa = vqa_accuracy(answers, [qa.answer for qa in qas], [qa.qtype for qa in qas])
    return out | {"vqa_acc": vqa["overall"]} | {f"vqa_{t}_acc": v for t, v in vqa["by_type"].items()}


SAVED = ("prefixlm-shapes",)  # what notebook 03 saves


def save(name: str, model: PrefixLM, metrics: dict, root=None):
    """Save to the zoo (fp16 safetensors + its config and metrics); returns the path."""
    return zoo.save_checkpoint(name, model.state_dict(), asdict(model.config), metrics, root=root, dtype="fp16")


def load(name: str, root=None) -> PrefixLM:
    """A PrefixLM saved with `save` (notebook 03 ships `prefixlm-shapes`), fp32."""
    state, record = zoo.load_checkpoint(name, root=root)
    model = PrefixLM(PrefixLMConfig(**record["config"]))
    model.load_state_dict(state)
    return model.float()


def verify(name: str, root=None, tolerance: float = 0.01) -> tuple[bool, str]:
    """Re-measure a saved PrefixLM on its held-out scenes and compare with its record (`zoo verify`)."""
    from ..tokenizer import load_tokenizer
    from ..unimodal import region_encoder, region_features

    model, recorded = load(name, root), zoo.load_checkpoint(name, root=root)[1]["metrics"]
    scenes = generation_scenes(recorded.get("eval_seed", 0), recorded.get("eval_n", 1000))
    features = region_features(region_encoder(), images_of(scenes))
    return zoo.compare_metrics(recorded, measure(model, load_tokenizer(), features, scenes), tolerance)
