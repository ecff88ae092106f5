"""vlmlab.generation: the one decoding loop (greedy, sampling, beam search; with a KV cache or recomputing), its
per-row condition, logits processors, empty prompts, and generate_text from image features to strings."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from vlmlab.generation import generate, generate_text, prompt_ids, sample_token
from vlmlab.lm import splice_visual
from vlmlab.nn import LMOutput
from vlmlab.strategies.prefix_lm import Config, PrefixLM

V = 40  # the vocabulary of conftest's tiny_lm


class Stateless:
    """The cache of a model that needs none: generate only asks it to keep rows."""

    def select(self, rows):
        pass


class Bigram(torch.nn.Module):
    """A hand-made 'language model': the next-token logits are table[last token]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table  # [V, V]

    def embed(self, ids):
        return F.one_hot(ids, self.table.size(0)).float()

    def forward(self, *, input_ids=None, inputs_embeds=None, attention_mask=None, cache=None, use_cache=False):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        return LMOutput(logits=x @ self.table, cache=Stateless() if use_cache else cache)


def sequence_logprob(table, start, tokens):
    logprobs = table.log_softmax(-1)
    return sum(logprobs[a, b].item() for a, b in zip([start, *tokens[:-1]], tokens))


def test_greedy_same_with_and_without_cache(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (3, 5))
    cached = generate(model, input_ids=ids, max_new_tokens=12)
    assert cached.shape == (3, 12) and len(cached.unique()) > 5  # the test model does not just repeat itself
    assert torch.equal(generate(model, input_ids=ids, max_new_tokens=12, use_cache=False), cached)


def test_greedy_is_argmax_of_full_forward(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 4))
    new = generate(model, input_ids=ids, max_new_tokens=3)
    seq = torch.cat([ids, new], dim=1)
    assert torch.equal(model(input_ids=seq).logits[:, 3:-1].argmax(-1), new)


def test_beam_of_one_is_greedy(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (3, 5))
    greedy = generate(model, input_ids=ids, max_new_tokens=10)
    assert torch.equal(generate(model, input_ids=ids, max_new_tokens=10, strategy="beam", num_beams=1), greedy)
    assert torch.equal(generate(model, input_ids=ids, max_new_tokens=10, strategy="beam", num_beams=1, use_cache=False), greedy)


def test_beam_escapes_the_greedy_trap():
    """From token 0: A=1 (p .6) or B=2 (p .4). After A every token is equally likely (.25); after B token 3 is
    certain. Greedy takes A (best path .15); two beams find B, 3 (.4)."""
    p = torch.full((4, 4), 1e-9)
    p[0, 1], p[0, 2] = 0.6, 0.4
    p[1] = 0.25
    p[2, 3] = 1.0
    p[3] = 0.25
    model = Bigram(p.log())
    start = torch.tensor([[0]])
    assert generate(model, input_ids=start, max_new_tokens=2)[0, 0].item() == 1
    assert generate(model, input_ids=start, max_new_tokens=2, strategy="beam", num_beams=2).tolist() == [[2, 3]]


def test_wide_beam_finds_the_most_likely_sequence():
    """With num_beams >= V ** (steps - 1) nothing is pruned, so beam search must match brute force."""
    table = torch.randn(3, 3, generator=torch.Generator().manual_seed(0)) * 2
    model = Bigram(table)
    best = max(itertools.product(range(3), repeat=3), key=lambda seq: sequence_logprob(table, 0, seq))
    beam = generate(model, input_ids=torch.tensor([[0]]), max_new_tokens=3, strategy="beam", num_beams=9)
    assert beam[0].tolist() == list(best)


def test_beam_score_not_below_greedy_on_tiny_lm(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (4, 3))

    def logprob(new):
        seq = torch.cat([ids, new], dim=1)
        logprobs = model(input_ids=seq).logits[:, 2:-1].log_softmax(-1)
        return logprobs.gather(-1, new[..., None]).sum(dim=(1, 2))

    greedy = generate(model, input_ids=ids, max_new_tokens=6)
    beam = generate(model, input_ids=ids, max_new_tokens=6, strategy="beam", num_beams=4)
    assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


def test_eos_then_padding_and_early_stop():
    """Token 1 -> eos (3) surely; token 2 -> 2 forever. Row 0 ends after one token, row 1 runs to the limit."""
    p = torch.full((4, 4), 1e-9)
    p[1, 3], p[2, 2], p[3, 3] = 1.0, 1.0, 1.0
    model = Bigram(p.log())
    out = generate(model, input_ids=torch.tensor([[1], [2]]), max_new_tokens=4, eos_token_id=3, pad_token_id=0)
    assert out.tolist() == [[3, 0, 0, 0], [2, 2, 2, 2]]
    assert generate(model, input_ids=torch.tensor([[1]]), max_new_tokens=4, eos_token_id=3).tolist() == [[3]]  # stops early
    beam = generate(model, input_ids=torch.tensor([[1], [2]]), max_new_tokens=4, strategy="beam", num_beams=2, eos_token_id=3)
    assert beam.tolist() == [[3, 0, 0, 0], [2, 2, 2, 2]]  # row 1 never ends, so no early stop


def test_left_padded_batch_equals_one_prompt_at_a_time(tiny_lm):
    model = tiny_lm()
    prompts = [torch.randint(1, V, (3,)), torch.randint(1, V, (6,))]
    ids = torch.zeros(2, 6, dtype=torch.long)
    attention_mask = torch.zeros(2, 6, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, 6 - len(prompt) :], attention_mask[row, 6 - len(prompt) :] = prompt, 1
    for kw in ({}, {"use_cache": False}, {"strategy": "beam", "num_beams": 3}):
        batched = generate(model, input_ids=ids, attention_mask=attention_mask, max_new_tokens=8, **kw)
        for row, prompt in enumerate(prompts):
            assert torch.equal(batched[row], generate(model, input_ids=prompt[None], max_new_tokens=8, **kw)[0]), kw
    with pytest.raises(ValueError, match="left padding"):
        generate(model, input_ids=ids, attention_mask=attention_mask.flip(1))


def test_sampling_reproducible_and_filtered(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 4))
    draw = lambda seed, **kw: generate(model, input_ids=ids, max_new_tokens=10, strategy="sample",
                                       generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert torch.equal(draw(3, top_k=1), generate(model, input_ids=ids, max_new_tokens=10))
    assert torch.equal(draw(4, top_p=1e-6), generate(model, input_ids=ids, max_new_tokens=10))
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).log_softmax(-1).repeat(2000, 1)  # p = .03 .09 .24 .64
    g = torch.Generator().manual_seed(0)
    assert set(sample_token(logits, top_k=2, generator=g).tolist()) == {2, 3}
    assert set(sample_token(logits, top_p=0.8, generator=g).tolist()) == {2, 3}  # .64 < .8 <= .64 + .24
    counts = torch.bincount(sample_token(logits, generator=g), minlength=4) / 2000
    assert_close(counts, logits[0].exp(), atol=0.03, rtol=0)


def test_generate_checks_arguments(tiny_lm):
    model = tiny_lm()
    ids = torch.zeros(1, 2, dtype=torch.long)
    for kw, name in [({"strategy": "topk"}, "strategy"), ({"temperature": 0}, "temperature"), ({"top_p": 0}, "top_p"),
                     ({"num_beams": 0}, "num_beams"), ({"max_new_tokens": 0}, "max_new_tokens"),
                     ({"logits_processor": "ban"}, "logits_processor"), ({"inputs_embeds": model.embed(ids)}, "exactly one")]:
        with pytest.raises(ValueError, match=name):
            generate(model, input_ids=ids, **kw)
    with pytest.raises(TypeError):
        generate(model, ids)  # keyword-only after the model


# ---------------------------------------------------------------------------------- a per-row condition


class RowCache:
    """Remembers the condition each row started with; generate must reorder it together with the condition."""

    def __init__(self, bias):
        self.bias = bias

    def select(self, rows):
        self.bias = self.bias[rows]


class ConditionedBigram(torch.nn.Module):
    """logits = table[last token] + bias[row]: the per-row condition `bias` [B, V] changes every choice. Its first
    call (no cache) puts its own start token (0) in front of the prompt, so an empty prompt is a whole one. Every
    call checks that the condition it is given belongs to the rows its cache holds."""

    def __init__(self, table):
        super().__init__()
        self.table, self.calls = table, []

    def embed(self, ids):
        return F.one_hot(ids, self.table.size(0)).float()

    def forward(self, *, bias, input_ids=None, inputs_embeds=None, attention_mask=None, cache=None, use_cache=False):
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds  # [B, T, V]
        self.calls.append((cache is None, len(bias), x.size(1), attention_mask.size(1)))
        if cache is None:
            x = torch.cat([self.embed(torch.zeros(len(x), 1, dtype=torch.long)), x], dim=1)  # own start token
            cache = RowCache(bias) if use_cache else None
        else:
            assert torch.equal(cache.bias, bias), "the condition and the cache hold different rows"
        return LMOutput(logits=x @ self.table + bias[:, None], cache=cache)


def conditioned(seed=0, B=3, V=3):
    g = torch.Generator().manual_seed(seed)
    return ConditionedBigram(torch.randn(V, V, generator=g) * 2), torch.randn(B, V, generator=g) * 2


def best_sequence(table, bias, prompt, steps):
    """Brute force: the most likely `steps` tokens after `prompt` (the start token 0 first) for one row."""
    logprobs = (table + bias).log_softmax(-1)
    last = prompt[-1] if prompt else 0

    def score(seq):
        return sum(logprobs[a, b].item() for a, b in zip([last, *seq[:-1]], seq))

    return list(max(itertools.product(range(table.size(0)), repeat=steps), key=score))


@pytest.mark.parametrize("use_cache", [True, False])
def test_condition_keeps_rows_and_beams_aligned(use_cache):
    """Three rows, each with its own condition: greedy follows each row's own scores, and wide beam search (nothing
    pruned) finds each row's own best sequence, so the condition travelled with its beams through every reordering."""
    model, bias = conditioned()
    prompt = torch.tensor([[1], [2], [0]])
    greedy = generate(model, input_ids=prompt, condition={"bias": bias}, max_new_tokens=4, use_cache=use_cache)
    for row in range(3):
        alone = generate(model, input_ids=prompt[row : row + 1], condition={"bias": bias[row : row + 1]}, max_new_tokens=4,
                         use_cache=use_cache)
        assert torch.equal(greedy[row], alone[0])
        last, expected = prompt[row, -1].item(), []
        for _ in range(4):  # argmax of table[last] + bias[row], step by step
            last = (model.table[last] + bias[row]).argmax().item()
            expected.append(last)
        assert greedy[row].tolist() == expected
    assert len({tuple(r) for r in greedy.tolist()}) > 1  # the conditions do change what is written
    beam = generate(model, input_ids=prompt, condition={"bias": bias}, max_new_tokens=3, strategy="beam", num_beams=9,
                    use_cache=use_cache)
    for row in range(3):
        assert beam[row].tolist() == best_sequence(model.table, bias[row], prompt[row].tolist(), 3), row


def test_beam_search_gives_every_call_the_condition_of_the_rows_its_cache_holds():
    """Rows b * K + j are beam j of prompt b: the condition the model gets on every call has B * K rows, in the order
    the cache holds them after each re-ranking (ConditionedBigram asserts it on every call), and every later call
    feeds one new token with the mask of everything so far."""
    model, bias = conditioned(seed=1, B=2, V=4)
    model.calls.clear()
    out = generate(model, input_ids=torch.tensor([[1], [3]]), condition={"bias": bias}, max_new_tokens=4,
                   strategy="beam", num_beams=3)
    assert out.shape == (2, 4)
    assert len(model.calls) == 4 and model.calls[0] == (True, 6, 1, 1)
    assert all(call == (False, 6, 1, 1 + step) for step, call in enumerate(model.calls[1:], 1))


# ---------------------------------------------------------------------------------- logits processors


def test_a_processor_that_bans_a_token_is_applied_at_every_step(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(0, V, (3, 4), generator=torch.Generator().manual_seed(0))
    plain = generate(model, input_ids=ids, max_new_tokens=12)
    banned = int(plain.flatten().mode().values)  # the token greedy writes most

    def ban(tokens, logits):
        return logits.index_fill(-1, torch.tensor([banned]), float("-inf"))

    for kw in ({}, {"strategy": "beam", "num_beams": 3}, {"use_cache": False},
               {"strategy": "sample", "generator": torch.Generator().manual_seed(0)}):
        out = generate(model, input_ids=ids, max_new_tokens=12, logits_processor=ban, **kw)
        assert out.shape == (3, 12) and not (out == banned).any(), kw


def test_a_processor_sees_the_tokens_so_far(tiny_lm):
    """A processor that forbids repeating the last token: it is given [B, t] tokens at step t, exactly those written."""
    model = tiny_lm()
    ids = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(1))
    seen = []

    def no_repeat(tokens, logits):
        seen.append(tokens.clone())
        if tokens.size(1):
            logits = logits.scatter(-1, tokens[:, -1:], float("-inf"))
        return logits

    out = generate(model, input_ids=ids, max_new_tokens=8, logits_processor=no_repeat)
    assert [s.shape for s in seen] == [(2, t) for t in range(8)]
    for t, tokens in enumerate(seen):
        assert torch.equal(tokens, out[:, :t])
    assert (out[:, 1:] != out[:, :-1]).all()
    seen.clear()
    beam = generate(model, input_ids=ids, max_new_tokens=6, strategy="beam", num_beams=3, logits_processor=no_repeat)
    assert [s.shape for s in seen] == [(6, t) for t in range(6)]  # one row per beam
    assert (beam[:, 1:] != beam[:, :-1]).all()


# ---------------------------------------------------------------------------------- cache or recompute, empty prompts


def test_cache_and_recompute_give_the_same_tokens_on_a_causal_lm(tiny_lm):
    model = tiny_lm()
    ids = torch.randint(1, V, (3, 5), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # one left-padded row
    for kw in ({}, {"strategy": "beam", "num_beams": 4}, {"strategy": "sample", "top_k": 5}):
        runs = []
        for use_cache in (True, False):
            seeded = {"generator": torch.Generator().manual_seed(3)} if kw.get("strategy") == "sample" else {}
            runs.append(generate(model, input_ids=ids, attention_mask=mask, max_new_tokens=10, use_cache=use_cache,
                                 **kw, **seeded))
        assert runs[0].shape == (3, 10)
        assert torch.equal(runs[1], runs[0]), kw


class PrefixedLM(torch.nn.Module):
    """A causal LM whose first call puts a per-row prefix [B, k, D] (the condition) in front of the text, as a frozen LM
    with a visual prefix does; the attention_mask it is given covers the text alone."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def embed(self, ids):
        return self.lm.embed(ids)

    def forward(self, *, prefix, input_ids=None, inputs_embeds=None, attention_mask=None, cache=None, use_cache=False):
        text = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if cache is None:
            joined = splice_visual(prefix, text, attention_mask)
            return self.lm(inputs_embeds=joined.inputs_embeds, attention_mask=joined.attention_mask, use_cache=use_cache)
        mask = torch.cat([attention_mask.new_ones(len(prefix), prefix.size(1)), attention_mask], dim=1)
        return self.lm(inputs_embeds=text, attention_mask=mask, cache=cache)


@pytest.mark.parametrize("kw", [{}, {"use_cache": False}, {"strategy": "beam", "num_beams": 3}],
                         ids=["cache", "recompute", "beam"])
def test_an_empty_prompt_works_when_the_model_adds_its_own_prefix(kw, tiny_lm):
    """Width-0 prompts: everything the model reads first is its own prefix. The tokens equal those the bare LM writes
    after the same prefix given as inputs_embeds."""
    lm = tiny_lm()
    prefix = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(4))
    empty = torch.zeros(2, 0, dtype=torch.long)
    out = generate(PrefixedLM(lm), input_ids=empty, condition={"prefix": prefix}, max_new_tokens=6, **kw)
    assert out.shape == (2, 6)
    assert torch.equal(out, generate(lm, inputs_embeds=prefix, max_new_tokens=6, **kw))
    model, bias = conditioned()
    out = generate(model, input_ids=torch.zeros(3, 0, dtype=torch.long), condition={"bias": bias}, max_new_tokens=2, **kw)
    assert out.shape == (3, 2)
    if kw.get("strategy") != "beam":
        assert out[:, 0].tolist() == (model.table[0] + bias).argmax(-1).tolist()  # after the model's own start token


# ---------------------------------------------------------------------------------- generate_text


def tiny_prefix_lm(tok, text_len=12):
    torch.manual_seed(0)
    config = Config(vocab_size=len(tok), vision_dim=6, n_image_tokens=4, text_len=text_len, dim=32, depth=1, n_heads=2)
    model = PrefixLM(config)
    for p in model.parameters():
        if p.ndim >= 2:
            torch.nn.init.normal_(p, std=0.3)
    return model.eval()


def test_prompt_ids_are_left_padded(tok):
    ids, mask = prompt_ids(tok, ["", "a red"])
    assert ids.shape == mask.shape and ids.size(1) == 1 + len(tok.encode("a red", add_special_tokens=False))
    assert mask[0].tolist() == [0] * (ids.size(1) - 1) + [1] and mask[1].all()
    assert ids[0, -1].item() == tok.bos_token_id == ids[1, 0].item() and ids[0, 0].item() == tok.pad_token_id
    ids, mask = prompt_ids(tok, ["", ""], bos=False)
    assert ids.shape == (2, 0) and mask.shape == (2, 0)


def test_generate_text_gives_one_string_per_image(tok):
    model = tiny_prefix_lm(tok)
    features = torch.randn(5, 4, 6, generator=torch.Generator().manual_seed(0))
    captions = generate_text(model, tok, features, max_new_tokens=5, batch_size=2)
    assert isinstance(captions, list) and len(captions) == 5 and all(isinstance(c, str) for c in captions)
    assert generate_text(model, tok, features, max_new_tokens=5, batch_size=5) == captions  # batches change nothing
    prompts = ["a", "", "is there a red circle?", "two", "a large"]
    answers = generate_text(model, tok, features, prompts, max_new_tokens=4, batch_size=3, strategy="beam", num_beams=2)
    assert len(answers) == 5
    for k in (0, 2):  # a row in a left-padded batch writes what it writes alone
        assert generate_text(model, tok, features[k : k + 1], prompts[k : k + 1], max_new_tokens=4, strategy="beam",
                             num_beams=2) == answers[k : k + 1]
    assert len(generate_text(model, tok, features[:2], bos=False, max_new_tokens=3)) == 2  # empty prompts, width 0
    with pytest.raises(ValueError, match="one per image"):
        generate_text(model, tok, features, ["a", "b"])


def test_generate_text_refuses_a_prompt_longer_than_max_text_len(tok):
    model = tiny_prefix_lm(tok, text_len=6)
    features = torch.randn(2, 4, 6)
    long_prompt = "a small red circle and a large blue square"
    assert 1 + len(tok.encode(long_prompt, add_special_tokens=False)) >= model.max_text_len
    with pytest.raises(ValueError, match="max_text_len=6"):
        generate_text(model, tok, features, ["", long_prompt])


def test_on_token_streams_each_step_as_it_is_chosen(tiny_lm):
    model, prompt, streamed = tiny_lm(), torch.randint(0, V, (2, 3)), []
    out = generate(model, input_ids=prompt, max_new_tokens=5, on_token=lambda t: streamed.append(t.clone()))
    assert torch.equal(torch.stack(streamed, dim=1), out)  # the same tokens, one step at a time
    with pytest.raises(ValueError, match="on_token"):
        generate(model, input_ids=prompt, max_new_tokens=2, strategy="beam", on_token=lambda t: None)
