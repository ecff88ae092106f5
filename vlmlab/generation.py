"""From a model to text: ONE decoding loop (greedy, sampling, beam search; with a KV cache or recomputing
everything) for every model of the workbook that writes. Introduced in notebook 01.

`generate` drives any model with

    embed(input_ids) -> [B, T, D]
    forward(*, input_ids | inputs_embeds, attention_mask, cache=None, use_cache=False, **condition)
        -> an output with .logits [B, T, V] and .cache

The first call has no cache: the model reads the whole prompt, as ids when the caller gave ids (notebook 03's
PrefixLM reads it both ways, notebook 04's captioner puts its visual prefix in front, notebook 05's Flamingo finds
its images at the prompt's `<image>` tokens). With `use_cache=True` it returns a cache, and every
later call passes it back with only the new tokens. `condition` holds per-row tensors the model takes on every
call (image tokens, a visual prefix, a cross-attention context): generate repeats them for beams and reorders them
with the beams. `attention_mask` covers the text the caller gave and generated; a model adds its own visual
positions to it. `logits_processor(tokens_so_far [B, t], logits [B, V]) -> logits` may change the scores before
each choice (notebook 07's CLIP-guided decoding).

`generate_text` is the same loop from images to strings: prompts in, continuations out, in batches.

Prompts of different lengths go in one batch LEFT-padded, with attention_mask 0 on the padding: every prompt then
ends in the last column, so each new token goes into the same column for every row.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .data.loaders import IGNORE_INDEX, encode_texts
from .params import is_int, is_number, require

STRATEGIES = ("greedy", "sample", "beam")
LogitsProcessor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class _Decoder:
    """Runs the prompt once, then one new token at a time; `logits` [B, V] always scores the next token.
    With a KV cache only the new token goes through the model; without, the prompt and every token so far do."""

    def __init__(self, model, prompt: dict, attention_mask: torch.Tensor, condition: dict, use_cache: bool):
        self.model, self.use_cache, self.condition = model, use_cache, condition
        self.prompt = prompt  # {"input_ids": [B, T]} or {"inputs_embeds": [B, T, D]}, as the caller gave it
        self.prompt_mask, self.mask = attention_mask, attention_mask  # [B, T], [B, T]
        self.tokens = attention_mask.new_zeros(len(attention_mask), 0)  # [B, n] what has been generated so far
        out = self._start()
        self.cache, self.logits = out.cache if use_cache else None, out.logits[:, -1]

    def _start(self):
        return self.model(**self.prompt, attention_mask=self.prompt_mask, use_cache=True, **self.condition)

    def feed(self, tokens: torch.Tensor) -> None:
        """Append one token per row ([B]) and compute the logits that follow it."""
        self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)  # [B, T + n]
        if self.use_cache:
            new, cache = tokens[:, None], self.cache
        else:  # recompute everything: the prompt, then all the tokens generated so far
            new, cache = self.tokens, self._start().cache
        self.logits = self.model(input_ids=new, attention_mask=self.mask, cache=cache, **self.condition).logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) these batch rows: beam search calls it when beams are re-ranked."""
        self.mask, self.logits, self.tokens = self.mask[rows], self.logits[rows], self.tokens[rows]
        self.condition = {name: value[rows] for name, value in self.condition.items()}
        if self.use_cache:
            self.cache.select(rows)
        else:  # only the path that recomputes everything reads the prompt again
            self.prompt = {name: value[rows] for name, value in self.prompt.items()}
            self.prompt_mask = self.prompt_mask[rows]

    def next_logits(self, processor: LogitsProcessor | None) -> torch.Tensor:
        return self.logits if processor is None else processor(self.tokens, self.logits)


def sample_token(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row ([B, V] -> [B]) drawn from softmax(logits / temperature), keeping only the top_k
    most likely tokens (0 = all) and the smallest set of most likely tokens whose probability reaches top_p
    (nucleus sampling; 1.0 = all). Introduced in notebook 01."""
    logits = logits.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]  # [B, 1] the k-th largest logit
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # [B, V]
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the more likely tokens; 0 for the first
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, -math.inf)
        logits = logits.scatter(-1, order, sorted_logits)  # back to vocabulary order
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=generator).squeeze(-1)


def _beam_search(decoder: _Decoder, batch: int, num_beams: int, max_new_tokens: int, length_penalty: float,
                 eos_token_id: list[int], pad_token_id: int, processor: LogitsProcessor | None) -> torch.Tensor:
    """Keep, for each prompt, the num_beams partial sequences with the highest summed log-probability.
    A beam that produced eos stays in the running with its score frozen (it can only add pad, at log-prob 0).
    At the end the best beam by score / length ** length_penalty wins. Row b * K + j of `decoder` is beam j
    of prompt b."""
    K, device = num_beams, decoder.logits.device
    scores = torch.zeros(batch, K, device=device)  # [B, K] summed log-probs
    scores[:, 1:] = -math.inf  # the K beams start identical: expand only the first one
    tokens = torch.zeros(batch * K, 0, dtype=torch.long, device=device)  # [B*K, steps so far]
    finished = torch.zeros(batch * K, dtype=torch.bool, device=device)
    lengths = torch.zeros(batch * K, device=device)  # tokens up to and including eos
    first_row = torch.arange(batch, device=device)[:, None] * K  # [B, 1]
    for step in range(max_new_tokens):
        if step > 0:
            decoder.feed(tokens[:, -1])
        logprobs = decoder.next_logits(processor).float().log_softmax(dim=-1)  # [B*K, V]
        V = logprobs.size(-1)
        only_pad = torch.full_like(logprobs, -math.inf)
        only_pad[:, pad_token_id] = 0.0
        logprobs = torch.where(finished[:, None], only_pad, logprobs)
        candidates = (scores.view(-1, 1) + logprobs).view(batch, K * V)  # every beam x every next token
        scores, best = candidates.topk(K, dim=-1)  # [B, K]
        rows = (first_row + best // V).view(-1)  # [B*K] the beam each survivor extends
        new = (best % V).view(-1)  # [B*K] the token it adds
        tokens = torch.cat([tokens[rows], new[:, None]], dim=1)
        finished = finished[rows]
        lengths = lengths[rows] + (~finished).float()
        finished = finished | torch.isin(new, torch.tensor(eos_token_id, device=device))
        decoder.select(rows)
        if finished.all():
            break
    winner = (scores / lengths.view(batch, K) ** length_penalty).argmax(dim=-1)  # [B]
    return tokens.view(batch, K, -1)[torch.arange(batch, device=device), winner]


def _validate(model, input_ids, inputs_embeds, attention_mask, max_new_tokens, strategy, temperature, top_k, top_p,
              num_beams, length_penalty, logits_processor) -> None:
    checks = [
        (callable(getattr(model, "embed", None)), "model", type(model).__name__, "a model with embed(input_ids), e.g. CausalLM"),
        ((input_ids is None) != (inputs_embeds is None), "input_ids/inputs_embeds", "both or neither", "exactly one"),
        (is_int(max_new_tokens) and max_new_tokens >= 1, "max_new_tokens", max_new_tokens, "an integer >= 1"),
        (strategy in STRATEGIES, "strategy", strategy, f"one of {STRATEGIES}"),
        (is_number(temperature) and temperature > 0, "temperature", temperature, "a number > 0"),
        (is_int(top_k) and top_k >= 0, "top_k", top_k, "an integer >= 0 (0: no top-k filter)"),
        (is_number(top_p) and 0 < top_p <= 1, "top_p", top_p, "a number in (0, 1] (1: no nucleus filter)"),
        (is_int(num_beams) and num_beams >= 1, "num_beams", num_beams, "an integer >= 1"),
        (is_number(length_penalty), "length_penalty", length_penalty, "a finite number (1.0: score per token)"),
        (logits_processor is None or callable(logits_processor), "logits_processor", logits_processor,
         "None or a function (tokens [B, t], logits [B, V]) -> logits [B, V]"),
        (attention_mask is None or attention_mask.size(1) == 0 or bool(attention_mask[:, -1].all()), "attention_mask",
         "padding in the last column", "left padding: every prompt must end in the last column"),
    ]
    for check in checks:
        require(*check, where="generate()")


@torch.no_grad()
def generate(model, *, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, condition: dict[str, torch.Tensor] | None = None,
             max_new_tokens: int = 20, strategy: str = "greedy", temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0,
             eos_token_id: int | list[int] | None = None,
             pad_token_id: int = 0, use_cache: bool = True, generator: torch.Generator | None = None,
             logits_processor: LogitsProcessor | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue the prompts: input_ids [B, T] or inputs_embeds [B, T, D], left-padded with attention_mask [B, T]
    when lengths differ (T may be 0 when the model's own prefix is the whole prompt). Introduced in notebook 01.

    strategy "greedy" takes the most likely token, "sample" draws one (temperature, top_k, top_p, and `generator`
    for reproducible draws), "beam" runs beam search with num_beams. `condition`: per-row tensors passed to every
    call of the model (see the module docstring). Returns the NEW tokens only, LongTensor [B, n] with
    n <= max_new_tokens: once a row emits eos_token_id (or any of a list of them: Flamingo's chunks also end at
    <|endofchunk|>) it continues with pad_token_id, and generation stops early
    when every row has. `on_token(tokens [B])` is called with each step's new tokens as they are chosen (greedy and
    sampling: a chat streams its answer, notebook 09). Call model.eval() first (dropout).
    """
    _validate(model, input_ids, inputs_embeds, attention_mask, max_new_tokens, strategy, temperature, top_k, top_p,
              num_beams, length_penalty, logits_processor)
    require(on_token is None or (callable(on_token) and strategy != "beam"), "on_token", on_token,
            "None, or a function of each step's tokens [B] (not with beam search, whose beams change their past)")
    # the prompt goes in as it was given: ids (a model may look for its <image> tokens there) or embeddings
    prompt = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}  # [B, T(, D)]
    first = next(iter(prompt.values()))
    (B, T), device = first.shape[:2], first.device
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=device)
    condition = dict(condition or {})
    stop = [] if eos_token_id is None else [eos_token_id] if is_int(eos_token_id) else list(eos_token_id)
    if strategy == "beam":
        K = num_beams
        decoder = _Decoder(model, {name: value.repeat_interleave(K, dim=0) for name, value in prompt.items()},
                           attention_mask.repeat_interleave(K, dim=0),
                           {name: value.repeat_interleave(K, dim=0) for name, value in condition.items()}, use_cache)
        return _beam_search(decoder, B, K, max_new_tokens, length_penalty, stop, pad_token_id, logits_processor)

    decoder = _Decoder(model, prompt, attention_mask, condition, use_cache)
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    new_tokens = []
    for step in range(max_new_tokens):
        if step > 0:
            decoder.feed(new_tokens[-1])
        logits = decoder.next_logits(logits_processor)
        if strategy == "greedy":
            token = logits.argmax(dim=-1)  # [B]
        else:
            token = sample_token(logits, temperature, top_k, top_p, generator)  # [B]
        token = token.masked_fill(finished, pad_token_id)  # rows that already ended get padding
        new_tokens.append(token)
        if on_token is not None:
            on_token(token)
        finished |= torch.isin(token, torch.tensor(stop, dtype=torch.long, device=device))
        if finished.all():
            break
    return torch.stack(new_tokens, dim=1)  # [B, n]


# ---------------------------------------------------------------- from images to strings


def prompt_ids(tokenizer, prompts: list[str], bos: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """[<bos>] + prompt, LEFT-padded so every prompt ends in the last column: ids and mask [B, T]. Introduced in
    notebook 03."""
    rows = [([tokenizer.bos_token_id] if bos else []) + tokenizer.encode(p, add_special_tokens=False) for p in prompts]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for k, row in enumerate(rows):
        if row:
            ids[k, width - len(row):], mask[k, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def asked(model, task: str, questions: list[str] | None = None) -> str | list[str]:
    """The prompt a captioner is asked with: its own `prompt_format[task]` when it has one (Flamingo's
    "<image>Output:" and "<image>Question: {} Answer:", notebook 05), else "" for a caption and the bare question."""
    form = getattr(model, "prompt_format", {}).get(task, "{}" if task == "vqa" else "")
    return form if questions is None else [form.format(q) for q in questions]


@torch.no_grad()
def generate_text(model, tokenizer, image_features: torch.Tensor, prompts: str | list[str] | None = None, *,
                  max_new_tokens: int = 24, batch_size: int = 256, bos: bool = True, **generate_kwargs) -> list[str]:
    """What a captioner (`vlmlab.protocols.Captioner`) writes after each image's prompt: image_features [N, ...]
    (what `model.image_features(images)` returns), one prompt for all or one per image (None: the model's caption
    prompt, `asked(model, "caption")`, which is "" for most; a question = an answer). Returns N strings, the
    continuation only; it ends at <eos> or at one of the model's own `stop_tokens` (Flamingo's <|endofchunk|>).
    generate_kwargs go to `generate` (strategy, num_beams, use_cache, logits_processor, ...). Introduced in notebook 03."""
    prompts = asked(model, "caption") if prompts is None else prompts
    prompts = [prompts] * len(image_features) if isinstance(prompts, str) else list(prompts)
    require(len(prompts) == len(image_features), "prompts", f"{len(prompts)} prompts", f"one per image ({len(image_features)})")
    model.eval()
    device = next(model.parameters()).device
    vocabulary = tokenizer.get_vocab()  # a model's stop token that this tokenizer lacks can never be written
    stop = [tokenizer.eos_token_id] + [vocabulary[t] for t in getattr(model, "stop_tokens", ()) if t in vocabulary]
    out = []
    for start in range(0, len(prompts), batch_size):
        condition = model.condition(image_features[start : start + batch_size].to(device))
        ids, mask = (t.to(device) for t in prompt_ids(tokenizer, prompts[start : start + batch_size], bos))
        room = model.max_text_len - ids.size(1)
        require(room > 0, "prompts", f"{ids.size(1)} tokens", f"fewer than the model's max_text_len={model.max_text_len}")
        new = generate(model, input_ids=ids, attention_mask=mask, condition=condition, max_new_tokens=min(max_new_tokens, room),
                       eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **generate_kwargs)
        out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


@torch.no_grad()
def continuation_logprob(model, tokenizer, image_features: torch.Tensor, prompts: list[str],
                         targets: list[str]) -> torch.Tensor:
    """Summed log-probability a captioner gives each target (plus <eos>) after its image and prompt: [B]. The
    caption explorers show it next to each decoded caption. Introduced in notebook 03."""
    model.eval()
    device = next(model.parameters()).device
    text = encode_texts(tokenizer, prompts, targets, max_length=model.max_text_len)
    ids, mask, labels = (t.to(device) for t in (text.input_ids, text.attention_mask, text.labels))
    logits = model(input_ids=ids, attention_mask=mask, **model.condition(image_features.to(device))).logits
    logits = logits[:, -ids.size(1) : -1].float()  # [B, T - 1]: the text's positions (visual ones come first), t scores t + 1
    logp = F.log_softmax(logits, dim=-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None]).squeeze(-1)  # [B, T - 1]
    return logp.masked_fill(labels[:, 1:] == IGNORE_INDEX, 0.0).sum(dim=1).cpu()  # not a product: -inf * 0 is NaN
