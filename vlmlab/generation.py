"""From a causal language model to text: greedy decoding, sampling (temperature, top-k, top-p) and beam
search, with or without a KV cache. Introduced in notebook 01.

`generate` works with any model that has `embed(input_ids)` and whose forward accepts `input_ids`,
`inputs_embeds`, `attention_mask`, `past_key_values` and `use_cache` and returns `.logits` [B, T, V] and
`.past_key_values`: `vlmlab.nn.CausalLM` and the multimodal models of later notebooks.

Prompts of different lengths go in one batch LEFT-padded, with attention_mask 0 on the padding: every
prompt then ends in the last column, so each new token goes into the same column for every row.
"""

from __future__ import annotations

import math

import torch

from .params import is_int, is_number, require

STRATEGIES = ("greedy", "sample", "beam")


class _Decoder:
    """Runs the prompt once, then one new token at a time; `logits` [B, V] always scores the next token.
    With a KV cache only the new token goes through the model; without, the whole sequence does."""

    def __init__(self, model, prompt: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool):
        self.model, self.use_cache = model, use_cache
        self.embeds, self.mask = prompt, attention_mask  # [B, T, D], [B, T]
        out = model(inputs_embeds=prompt, attention_mask=attention_mask, use_cache=use_cache)
        self.cache, self.logits = out.past_key_values, out.logits[:, -1]  # cache: one KVCache per layer

    def feed(self, tokens: torch.Tensor) -> None:
        """Append one token per row ([B]) and compute the logits that follow it."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)  # [B, T + 1]
        if self.use_cache:
            out = self.model(input_ids=tokens[:, None], attention_mask=self.mask, past_key_values=self.cache, use_cache=True)
        else:
            self.embeds = torch.cat([self.embeds, self.model.embed(tokens[:, None])], dim=1)  # [B, T + 1, D]
            out = self.model(inputs_embeds=self.embeds, attention_mask=self.mask)
        self.logits = out.logits[:, -1]  # [B, V]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder) these batch rows: beam search calls it when beams are re-ranked."""
        self.mask, self.logits = self.mask[rows], self.logits[rows]
        if self.use_cache:
            for layer_cache in self.cache:
                layer_cache.select(rows)
        else:  # only the path that recomputes everything reads the embeddings again
            self.embeds = self.embeds[rows]


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
                 eos_token_id: int | None, pad_token_id: int) -> torch.Tensor:
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
        logprobs = decoder.logits.float().log_softmax(dim=-1)  # [B*K, V]
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
        if eos_token_id is not None:
            finished = finished | (new == eos_token_id)
        decoder.select(rows)
        if finished.all():
            break
    winner = (scores / lengths.view(batch, K) ** length_penalty).argmax(dim=-1)  # [B]
    return tokens.view(batch, K, -1)[torch.arange(batch, device=device), winner]


def _validate(model, input_ids, inputs_embeds, attention_mask, max_new_tokens, strategy, temperature, top_k, top_p,
              num_beams, length_penalty) -> None:
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
        (attention_mask is None or bool(attention_mask[:, -1].all()), "attention_mask", "padding in the last column",
         "left padding: every prompt must end in the last column"),
    ]
    for check in checks:
        require(*check, where="generate()")


@torch.no_grad()
def generate(model, input_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
             attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20, strategy: str = "greedy",
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0,
             eos_token_id: int | None = None, pad_token_id: int = 0, use_cache: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue the prompts: input_ids [B, T] or inputs_embeds [B, T, D] (e.g. a visual prefix followed by
    embedded text), left-padded with attention_mask [B, T] when lengths differ. Introduced in notebook 01.

    strategy "greedy" takes the most likely token, "sample" draws one (temperature, top_k, top_p, and
    `generator` for reproducible draws), "beam" runs beam search with num_beams. Returns the NEW tokens
    only, LongTensor [B, n] with n <= max_new_tokens: once a row emits eos_token_id it continues with
    pad_token_id, and generation stops early when every row has. Call model.eval() first (dropout).
    """
    _validate(model, input_ids, inputs_embeds, attention_mask, max_new_tokens, strategy, temperature, top_k, top_p,
              num_beams, length_penalty)
    prompt = model.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, D]
    B, T = prompt.shape[:2]
    if attention_mask is None:
        attention_mask = torch.ones(B, T, dtype=torch.long, device=prompt.device)
    if strategy == "beam":
        K = num_beams
        decoder = _Decoder(model, prompt.repeat_interleave(K, dim=0), attention_mask.repeat_interleave(K, dim=0), use_cache)
        return _beam_search(decoder, B, K, max_new_tokens, length_penalty, eos_token_id, pad_token_id)

    decoder = _Decoder(model, prompt, attention_mask, use_cache)
    finished = torch.zeros(B, dtype=torch.bool, device=prompt.device)
    new_tokens = []
    for step in range(max_new_tokens):
        if step > 0:
            decoder.feed(new_tokens[-1])
        if strategy == "greedy":
            token = decoder.logits.argmax(dim=-1)  # [B]
        else:
            token = sample_token(decoder.logits, temperature, top_k, top_p, generator)  # [B]
        token = token.masked_fill(finished, pad_token_id)  # rows that already ended get padding
        new_tokens.append(token)
        if eos_token_id is not None:
            finished |= token == eos_token_id
        if finished.all():
            break
    return torch.stack(new_tokens, dim=1)  # [B, n]
