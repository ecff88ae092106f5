"""MaGiC (notebook 07): the degeneration penalty, the MaGiC score as a logits processor, captions with and without
the image."""

import math

import pytest
import torch
from conftest import TINY_VOCAB

from vlmlab.generation import generate
from vlmlab.lm import TinyLanguageModel
from vlmlab.strategies import magic


def test_degeneration_penalty_is_the_highest_cosine_with_an_earlier_real_token():
    e1, e2 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    hidden = torch.stack([e1, e2, 2 * e1])[None]  # the candidate (last) repeats the first token's direction
    assert magic.degeneration_penalty(hidden, torch.ones(1, 3)).item() == pytest.approx(1.0)
    assert magic.degeneration_penalty(hidden, torch.tensor([[0, 1, 1]])).item() == pytest.approx(0.0)  # padding ignored


def processor(lm, alpha, beta, match=None, k=4, top_p=1.0):
    prompt = torch.tensor([[1, 5, 6], [1, 7, 8]])
    config = magic.Config(k=k, alpha=alpha, beta=beta, top_p=top_p)
    match = match or (lambda texts, mask: torch.zeros(len(texts)))
    return magic.MagicProcessor(lm, prompt, torch.ones_like(prompt), match, config), prompt


def test_without_penalty_and_image_it_is_greedy_over_k_candidates(tiny_lm):
    lm = TinyLanguageModel(tiny_lm())
    proc, prompt = processor(lm, alpha=0.0, beta=0.0)
    logits = lm(input_ids=prompt).logits[:, -1]
    scores = proc(prompt[:, :0], logits)
    assert scores.isfinite().sum(dim=1).tolist() == [4, 4]
    assert torch.equal(scores.argmax(dim=1), logits.argmax(dim=1))
    torch.testing.assert_close(scores.max(dim=1).values, logits.softmax(dim=1).max(dim=1).values)


def test_the_image_term_can_overrule_the_language_model(tiny_lm):
    lm = TinyLanguageModel(tiny_lm())
    prompt = torch.tensor([[1, 5, 6], [1, 7, 8]])
    logits = lm(input_ids=prompt).logits[:, -1]
    wanted = logits.topk(4, dim=1).indices[:, 3]  # each row's 4th most likely token

    def match(texts, mask):  # the "image" likes exactly that token as the continuation
        return 50.0 * (texts[:, -1] == wanted.repeat_interleave(4)).float()

    proc, _ = processor(lm, alpha=0.1, beta=5.0, match=match)
    assert torch.equal(proc(prompt[:, :0], logits).argmax(dim=1), wanted)


def test_it_runs_inside_the_one_decoding_loop(tiny_lm):
    lm = TinyLanguageModel(tiny_lm())
    proc, prompt = processor(lm, alpha=0.3, beta=0.0)
    out = generate(lm, input_ids=prompt, max_new_tokens=5, logits_processor=proc, pad_token_id=0)
    assert out.shape == (2, 5) and int(out.max()) < TINY_VOCAB


def test_without_the_image_every_picture_gets_the_same_caption(tiny_zoo, tok):
    from test_contract import tiny_magic

    model, _, bench = tiny_magic(tiny_zoo, tok)
    blind = model.caption(tok, bench.images, beta=0.0)
    assert len(set(blind)) == 1 and blind[0].startswith(model.config.prompt)
    assert len(model.caption(tok, bench.images[:2], beta=2.0)) == 2
    assert not any(p.requires_grad for p in model.parameters()) and magic.batch_loss is None


def test_the_nucleus_holds_the_fewest_candidates_that_reach_top_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]])
    assert magic.nucleus(probs, 0.9).tolist() == [[True, True, True, False], [True, False, False, False]]
    assert magic.nucleus(probs, 0.8).tolist() == [[True, True, False, False], [True, False, False, False]]
    assert magic.nucleus(probs, 1.0).all() and magic.nucleus(torch.tensor([[1.0, 0.0]]), 1.0).all()


def test_the_image_votes_only_among_the_nucleus(tiny_lm):
    lm = TinyLanguageModel(tiny_lm())
    _, prompt = processor(lm, alpha=0.0, beta=0.0)
    logits = lm(input_ids=prompt).logits[:, -1]
    top = logits.softmax(dim=1).topk(4, dim=1)
    top_p = (top.values[:, :2].sum(dim=1).min().item() + top.values[:, 0].max().item()) / 2  # one or two kept per row
    kept = magic.nucleus(top.values, top_p)
    outside = top.indices[:, 3]  # the "image" likes only the 4th candidate, which is never in this nucleus

    def match(texts, mask):
        return 50.0 * (texts[:, -1] == outside.repeat_interleave(4)).float()

    scores = processor(lm, alpha=0.0, beta=5.0, match=match, top_p=top_p)[0](prompt[:, :0], logits)
    assert scores.isfinite().sum(dim=1).tolist() == kept.sum(dim=1).tolist()
    expected = top.values + 5.0 * torch.zeros_like(top.values).masked_fill(~kept, -math.inf).softmax(dim=1)
    torch.testing.assert_close(scores.gather(1, top.indices), expected.masked_fill(~kept, -math.inf))
    assert torch.equal(scores.argmax(dim=1), top.indices[:, 0])  # an even vote inside: the LM's first choice
    everything = processor(lm, alpha=0.0, beta=5.0, match=match)[0](prompt[:, :0], logits)  # top_p = 1: all four
    assert torch.equal(everything.argmax(dim=1), outside)


@pytest.mark.parametrize("bad", [{"k": 0}, {"alpha": 1.5}, {"beta": -1.0}, {"max_new_tokens": 0}, {"top_p": 0.0},
                                 {"top_p": 1.5}])
def test_config_rejects_bad_values_by_name(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        magic.Config(**bad)


def test_clip_closes_each_candidate_text_with_one_eos(tok):
    from test_viz_widgets import tiny_clip

    clip_model, eos = tiny_clip(tok), tok.eos_token_id
    image = clip_model.encode_image(torch.rand(1, 3, 32, 32) * 2 - 1)  # [1, E]
    text = torch.tensor(tok.encode("a large red circle"))[None]  # [1, T]
    ended, going_on = torch.cat([text, text.new_full((1, 1), eos)], 1), torch.cat([text, text[:, -1:]], 1)  # [1, T + 1]
    texts = torch.cat([ended, going_on])  # two candidates: <eos>, and one more word
    scores = magic.clip_match(clip_model, image, eos, k=2)(texts, torch.ones_like(texts))
    for candidate, closed in zip(scores, (ended, torch.cat([going_on, ended[:, -1:]], 1))):
        expected = clip_model.scale * (clip_model.encode_text(closed, torch.ones_like(closed)) * image).sum()
        torch.testing.assert_close(candidate, expected)


def test_scores_outside_the_candidates_are_minus_infinity(tiny_lm):
    lm = TinyLanguageModel(tiny_lm())
    proc, prompt = processor(lm, alpha=0.5, beta=1.0, k=3)
    scores = proc(prompt[:, :0], lm(input_ids=prompt).logits[:, -1])
    assert (scores == -math.inf).sum().item() == 2 * (TINY_VOCAB - 3)
