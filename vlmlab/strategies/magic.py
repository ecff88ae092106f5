"""MaGiC (Su et al., 2022): a frozen language model writes, a frozen CLIP steers it, nothing trains. Introduced in
notebook 07.

At every step the LM proposes its k most likely next tokens; each candidate v is scored by

    (1 - alpha) * p_LM(v | text so far)                     what the LM finds fluent
    - alpha * max_j cos(h_v, h_j)                           contrastive search's degeneration penalty: the candidate's
                                                            last-layer state h_v against every earlier token's h_j
    + beta * softmax_k(CLIP(image, text so far + v))        the image: which continuation CLIP finds closest to it

and the best-scored candidate is taken. With beta = 0 it is contrastive search (Su et al., 2022, SimCTG): fluent text
about nothing in particular. `top_p` < 1 cuts the k candidates to their nucleus (Holtzman et al., 2020), the fewest
that hold top_p of the LM's probability: CLIP's softmax then votes only among continuations the LM finds plausible,
and its vote is not spent on words the LM gives 0.001 (notebook 07, section 10). top_p = 1 is the paper's top k.

`MagicProcessor` is a logits processor for the workbook's one decoding loop (`vlmlab.generation.generate`, greedy):
it leaves -inf everywhere but the candidates, which get their MaGiC score.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import zoo
from ..data.evalsets import SceneBench
from ..data.loaders import to_float
from ..evaluate import caption_scores
from ..frozen import FrozenParts, freeze
from ..generation import generate, prompt_ids
from ..lm import LanguageModel, load_language_model
from ..params import SavedConfig, is_int, is_number, require

ImageMatch = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (texts [B * k, T], mask [B * k, T]) -> logits [B * k]


@dataclass
class Config(SavedConfig):
    """`k` candidates per step, cut to the nucleus holding `top_p` of the LM's probability (1: all k, as the paper),
    the weights `alpha` (degeneration penalty) and `beta` (the image), the `prompt` every caption starts from, and
    the frozen parts' checkpoints ({"name", "sha256"}): the LM and notebook 02's CLIP."""

    k: int = 8
    alpha: float = 0.1
    beta: float = 1.0
    top_p: float = 1.0
    prompt: str = "a picture of"
    max_new_tokens: int = 20
    lm: dict | None = None
    clip: dict | None = None

    def __post_init__(self):
        require(is_int(self.k) and self.k >= 1, "k", self.k, "an integer >= 1")
        require(is_int(self.max_new_tokens) and self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens,
                "an integer >= 1")
        require(is_number(self.alpha) and 0 <= self.alpha <= 1, "alpha", self.alpha, "a number in [0, 1]")
        require(is_number(self.beta) and self.beta >= 0, "beta", self.beta, "a number >= 0")
        require(is_number(self.top_p) and 0 < self.top_p <= 1, "top_p", self.top_p, "a number in (0, 1]")


def nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which of the candidates, their LM probabilities probs [B, k] sorted high to low, are in the nucleus: the
    fewest that together hold top_p of the probability (the first always) -> bool [B, k]. Introduced in notebook 07."""
    if top_p >= 1:
        return torch.ones_like(probs, dtype=torch.bool)  # the paper's top k, whatever the rounding of the sums
    return probs.cumsum(dim=-1) - probs < top_p


def degeneration_penalty(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Contrastive search's penalty: hidden [N, T + 1, D] (the last position is the candidate), mask [N, T + 1]
    -> [N], the highest cosine of the candidate's state with an earlier real token's."""
    h = F.normalize(hidden.float(), dim=-1)
    cos = (h[:, :-1] @ h[:, -1:].transpose(1, 2)).squeeze(-1)  # [N, T]
    return cos.masked_fill(mask[:, :-1] == 0, -1.0).max(dim=1).values


class MagicProcessor:
    """The MaGiC score as a logits processor for greedy `generate`: (tokens so far [B, t], logits [B, V]) -> scores
    [B, V], -inf but at each row's candidates (the k, or their nucleus). It knows the prompt each row started from
    (ids and mask [B, T0], left-padded) and how to match texts with the row's image (`image_match`, rows repeated k
    times)."""

    def __init__(self, lm: LanguageModel, prompt: torch.Tensor, prompt_mask: torch.Tensor, image_match: ImageMatch,
                 config: Config):
        self.lm, self.prompt, self.prompt_mask, self.image_match, self.config = lm, prompt, prompt_mask, image_match, config

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        c, B = self.config, len(logits)
        top = logits.float().softmax(dim=-1).topk(c.k, dim=-1)  # values, indices [B, k]
        kept = nucleus(top.values, c.top_p)  # [B, k]
        context = torch.cat([self.prompt, tokens], dim=1)  # [B, T]
        mask = torch.cat([self.prompt_mask, torch.ones_like(tokens)], dim=1)  # [B, T]
        texts = torch.cat([context.repeat_interleave(c.k, dim=0), top.indices.reshape(-1, 1)], dim=1)  # [B*k, T + 1]
        texts_mask = torch.cat([mask.repeat_interleave(c.k, dim=0), mask.new_ones(B * c.k, 1)], dim=1)
        score = (1 - c.alpha) * top.values
        if c.alpha > 0:
            penalty = degeneration_penalty(self.lm.hidden_states(texts, texts_mask), texts_mask).view(B, c.k)
            score = score - c.alpha * penalty
        if c.beta > 0:
            votes = self.image_match(texts, texts_mask).view(B, c.k).masked_fill(~kept, -math.inf)  # [B, k]
            score = score + c.beta * votes.softmax(dim=-1)  # CLIP votes among the kept candidates only
        score = score.masked_fill(~kept, -math.inf)
        return torch.full_like(logits, -math.inf).scatter(1, top.indices, score.to(logits.dtype))


def clip_match(clip, image_embeddings: torch.Tensor, eos_token_id: int, k: int) -> ImageMatch:
    """How well each candidate text matches its row's image, by notebook 02's CLIP: image_embeddings [B, E] (unit);
    texts arrive as <bos> ... candidate (k rows per image), get their <eos> (a candidate that is <eos> has ended its
    text already), and are scored scale * cosine."""
    images = image_embeddings.repeat_interleave(k, dim=0)  # [B*k, E]

    def match(texts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        open_ended = (texts[:, -1:] != eos_token_id).to(mask.dtype)  # [B*k, 1]: 0 where the candidate ends the text
        ids = torch.cat([texts, texts.new_full((len(texts), 1), eos_token_id)], dim=1)  # [B*k, T + 1]
        return clip.scale * (clip.encode_text(ids, torch.cat([mask, open_ended], dim=1)) * images).sum(-1)

    return match


def decoded_match(tokenizer, prompt_length: int, score: Callable[[list[str]], torch.Tensor]) -> ImageMatch:
    """For a judge that reads strings (another tokenizer, a sentence encoder): each candidate text without its prompt
    (the first `prompt_length` columns), decoded, is scored by `score(strings) -> [B * k]` (notebook 07's real track)."""

    def match(texts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return score([s.strip() for s in tokenizer.batch_decode(texts[:, prompt_length:], skip_special_tokens=True)])

    return match


@torch.no_grad()
def magic_generate(lm: LanguageModel, tokenizer, n: int, match_for: Callable[[slice, int], ImageMatch], config: Config,
                   stop: list[int] | None = None, bos: bool = True, batch_size: int = 100) -> list[str]:
    """Continuations of `config.prompt` for n images, greedy under MaGiC's score, `batch_size` images at a time:
    `match_for(rows, prompt_length)` gives the ImageMatch of the images `rows` (a slice). Stops at `stop` tokens
    (default: the tokenizer's eos)."""
    device, out = next(lm.parameters()).device, []
    stop = stop if stop is not None else [tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    for start in range(0, n, batch_size):
        rows = slice(start, min(n, start + batch_size))
        ids, mask = (t.to(device) for t in prompt_ids(tokenizer, [config.prompt] * (rows.stop - rows.start), bos))
        processor = MagicProcessor(lm, ids, mask, match_for(rows, ids.size(1)), config)
        new = generate(lm, input_ids=ids, attention_mask=mask, max_new_tokens=config.max_new_tokens, eos_token_id=stop,
                       pad_token_id=pad, logits_processor=processor)
        out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


class Magic(FrozenParts):
    """A frozen LM and a frozen CLIP, nothing else: `caption(tokenizer, images)` writes with MaGiC's score."""

    FROZEN = ("lm", "clip")

    def __init__(self, config: Config, lm: LanguageModel | None = None, clip=None):
        super().__init__()
        self.config = config
        self.lm = lm if lm is not None else load_language_model(config.lm)
        self.clip = freeze(clip if clip is not None else zoo.load_model(config.clip["name"], sha256=config.clip["sha256"])[0])

    @classmethod
    def from_config(cls, config: dict) -> Magic:
        return cls(Config(**config))

    @torch.no_grad()
    def caption(self, tokenizer, images: torch.Tensor, batch_size: int = 100, **changes) -> list[str]:
        """Captions of uint8 images [N, 3, H, W], each the prompt and its continuation. `changes` override the
        config for this call (k, alpha, beta, top_p, prompt, max_new_tokens)."""
        c = Config(**{**self.config.to_dict(), **changes})
        device = self.clip.logit_scale.device

        def match_for(rows: slice, prompt_length: int) -> ImageMatch:
            embeddings = self.clip.encode_image(to_float(images[rows]).to(device))
            return clip_match(self.clip, embeddings, tokenizer.eos_token_id, c.k)

        said = magic_generate(self.lm, tokenizer, len(images), match_for, c, batch_size=batch_size)
        return [f"{c.prompt} {text}".strip() for text in said]


batch_loss = None  # the contract's name; None: MaGiC has nothing to train


def measure(model: Magic, tokenizer, bench: SceneBench) -> dict[str, float]:
    """Notebook 03's caption numbers (scene F1 with relations, attribute F1, exact, BLEU, CIDEr) of MaGiC's captions."""
    return {f"caption_{k}": v for k, v in caption_scores(model.caption(tokenizer, bench.images), bench.scenes).items()}


TARGETS = {  # notebook 07, on held-out scenes of 1-4 objects
    "smoke": {},
    "cpu": {"magic_caption_f1": (">=", 0.50), "magic_over_lm_only": (">=", 2.0)},
    "gpu": {"magic_caption_f1": (">=", 0.50), "magic_over_lm_only": (">=", 2.0)},
}
SAVED: tuple[str, ...] = ()  # nothing trained, nothing shipped
