"""The strategy contract, checked for every strategy in `strategies.REGISTRY`: the same names, a finite loss on a
canonical batch, the protocols each model answers (unit vectors, B strings, B scores), and save -> load -> the same
measurements. A new strategy must add a tiny builder here (the first test fails until it does)."""

import dataclasses
import math

import pytest
import torch

from vlmlab import protocols, runs, zoo
from vlmlab.data import evalsets
from vlmlab.data.language import IMAGE_TOKEN, answer_vocabulary, caption, instructions, shot
from vlmlab.data.loaders import encode_texts, indexed_collate, to_float
from vlmlab.generation import generate_text
from vlmlab.nn import TextConfig, ViTConfig
from vlmlab.strategies import REGISTRY, asif, blip2, clip, flamingo, frozen_prefix, fusion, lit, llava, magic, prefix_lm


def tiny_clip(refs, tok):
    config = clip.Config(vision=ViTConfig(image_size=64, patch_size=16, dim=16, depth=1, n_heads=2),
                         text=TextConfig(vocab_size=len(tok), max_len=40, dim=16, depth=1, n_heads=2, causal=True),
                         embed_dim=8, image_pool="grid")
    bench = evalsets.DualEncoderBench.build(seed=0, n=6)
    text = encode_texts(tok, [caption(s) for s in bench.retrieval], max_length=40)
    return clip.CLIP(config), indexed_collate(bench.images["retrieval"], text)(list(range(6))), bench


def tiny_lit(refs, tok):
    g = torch.Generator().manual_seed(0)
    pairs = lit.FeaturePairs(torch.randn(6, 10, generator=g), torch.randn(6, 7, generator=g), [f"caption {i}" for i in range(6)])
    batch = {"image_features": pairs.image_features, "text_features": pairs.text_features}
    return lit.ProjectionHeads(lit.Config(image_dim=10, text_dim=7, embed_dim=8)), batch, pairs


def scene_batch(tok, bench, key="images"):
    text = encode_texts(tok, [""] * len(bench.scenes), [caption(s) for s in bench.scenes], max_length=30)
    return indexed_collate(bench.images, text, key=key)(list(range(len(bench.scenes))))


def tiny_prefix_lm(refs, tok):
    vision = {"tower": "regions", **refs["tiny-vit-detector-probe"]}
    config = prefix_lm.Config(vocab_size=len(tok), vision_dim=20, n_image_tokens=9, text_len=30, dim=32, depth=2, n_heads=2,
                              vision=vision)
    bench = evalsets.SceneBench.build(seed=0, n=4, questions_per_scene=1)
    return prefix_lm.PrefixLM.from_config(config.to_dict()), scene_batch(tok, bench), bench


def tiny_frozen_prefix(refs, tok):
    config = frozen_prefix.Config(mapper="object", in_dim=76, k=2, lm=refs["tiny-gpt"],
                                  vision={"tower": "objects", **refs["tiny-vit-detector-probe"]})
    bench = evalsets.SceneBench.build(seed=0, n=4, questions_per_scene=1)
    return frozen_prefix.PrefixCaptioner(config), scene_batch(tok, bench), bench


def tiny_flamingo(refs, tok):
    config = flamingo.Config(visual_dim=16, n_latents=2, resampler_depth=1, n_heads=2, ff_mult=1, lm=refs["tiny-lm"],
                             vision={"tower": "vit", **refs["tiny-vit-detector"]},
                             image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN))
    bench = evalsets.SceneBench.build(seed=0, n=4, questions_per_scene=1)
    text = encode_texts(tok, [""] * 4, [f"{p} {t}" for p, t in map(shot, bench.scenes)], max_length=40)  # <image>Output: ...
    return flamingo.Flamingo(config), indexed_collate(bench.images, text)(list(range(4))), bench


def tiny_fusion(refs, tok):
    config = fusion.Config(vocab_size=len(tok), image="regions", text_len=30, dim=16, depth=1, n_heads=2,
                           answers=answer_vocabulary(), vision={"tower": "regions", **refs["tiny-vit-detector-probe"]})
    bench = evalsets.FusionBench.build(seed=0, n=4)
    scenes = bench.scenes.scenes
    captions, negatives = (encode_texts(tok, texts, max_length=30, ends=fusion.Fusion.text_ends)
                           for texts in ([caption(s) for s in scenes], [n.text for n in fusion.world_negatives(scenes)]))
    return fusion.Fusion.from_config(config.to_dict()), fusion.pretraining_collate(bench.scenes.images, captions,
                                                                                 negatives)(list(range(4))), bench


def tiny_asif(refs, tok):
    config = asif.Config(k_image=2, k_text=4, image_dim=16, text_dim=32, text_len=40, image=refs["tiny-vit-detector"],
                         text=refs["tiny-bert"])
    _, batch, bench = tiny_clip(refs, tok)  # the anchors: the bench's six retrieval pairs
    model = asif.ASIF.from_pairs(config, tok, bench.images["retrieval"], [caption(s) for s in bench.retrieval])
    return model, batch, bench


def tiny_magic(refs, tok):
    clip_model, _, _ = tiny_clip(refs, tok)
    path = zoo.save_model("tiny-clip", clip_model, {}, strategy="clip", dtype=None)
    config = magic.Config(k=3, max_new_tokens=4, lm=refs["tiny-lm"],
                          clip={"name": "tiny-clip", "sha256": zoo.read_record(path)["sha256"]})
    bench = evalsets.SceneBench.build(seed=0, n=4, questions_per_scene=1)
    return magic.Magic(config), scene_batch(tok, bench), bench


def tiny_blip2(refs, tok):
    qformer = blip2.QFormerConfig(vocab_size=len(tok), visual_dim=16, n_queries=2, dim=16, depth=2, n_heads=2, mlp_dim=32,
                                  text_len=40)
    config = blip2.Config(qformer=qformer, embed_dim=8, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          vision={"tower": "vit", **refs["tiny-vit-detector"]})
    bench = evalsets.DualEncoderBench.build(seed=0, n=4)
    text = encode_texts(tok, [caption(s) for s in bench.retrieval], max_length=40, ends=blip2.Blip2.text_ends)
    return blip2.Blip2(config), indexed_collate(bench.images["retrieval"], text)(list(range(4))), bench


def tiny_llava(refs, tok):
    config = llava.Config(projector="mlp", visual_dim=16, n_visual=17, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                          train_lm=True, lm=refs["tiny-lm"], vision={"tower": "vit", **refs["tiny-vit-detector"]})
    bench = evalsets.SceneBench.build(seed=0, n=4, questions_per_scene=1)
    chats = llava.encode_chats(tok, [instructions(s)["complex_reasoning"] for s in bench.scenes], max_length=60)
    return llava.Llava(config), indexed_collate(bench.images, chats)(list(range(4))), bench


TINY = {"clip": tiny_clip, "lit": tiny_lit, "prefix_lm": tiny_prefix_lm, "frozen_prefix": tiny_frozen_prefix,
        "flamingo": tiny_flamingo, "fusion": tiny_fusion, "asif": tiny_asif, "magic": tiny_magic, "blip2": tiny_blip2,
        "llava": tiny_llava}


def test_every_registered_strategy_has_a_tiny_builder_here():
    assert set(TINY) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_strategy_exposes_the_contract(name):
    module = REGISTRY[name]
    assert dataclasses.is_dataclass(module.Config)
    assert (callable(module.batch_loss) or module.batch_loss is None) and callable(module.measure)  # None: trains nothing
    assert isinstance(module.SAVED, tuple) and all(isinstance(n, str) for n in module.SAVED)
    assert set(module.TARGETS) == {"smoke", "cpu", "gpu"}
    for targets in module.TARGETS.values():
        for metric, (op, bound) in targets.items():
            assert isinstance(metric, str) and op in runs.COMPARISONS and isinstance(bound, float), (metric, op, bound)


@pytest.fixture(params=sorted(REGISTRY))
def built(request, tiny_zoo, tok):
    torch.manual_seed(0)
    model, batch, bench = TINY[request.param](tiny_zoo, tok)
    return request.param, model, batch, bench


def test_config_round_trips_through_a_dict(built):
    name, model, _, _ = built
    config = REGISTRY[name].Config
    assert config.from_dict(model.config.to_dict()) == model.config


def test_batch_loss_is_a_finite_scalar_that_reaches_the_trained_parts(built):
    name, model, batch, _ = built
    if REGISTRY[name].batch_loss is None:  # notebook 07's strategies train nothing: nothing may require a gradient
        assert not any(p.requires_grad for p in model.parameters())
        return
    loss, logs = REGISTRY[name].batch_loss(model.train(), batch)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and isinstance(logs, dict)
    loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_models_answer_their_protocols(built, tok):
    name, model, batch, _ = built
    model.eval()
    if isinstance(model, protocols.Captioner):
        features = model.image_features(to_float(batch["images"]))
        said = generate_text(model, tok, features, max_new_tokens=4)
        assert len(said) == len(features) and all(isinstance(s, str) for s in said)
    if name == "lit":  # a dual encoder on the frozen towers' features
        image, text = model.encode_image(batch["image_features"]), model.encode_text(batch["text_features"])
    elif isinstance(model, protocols.DualEncoder):
        image = model.encode_image(to_float(batch["images"]))
        text = model.encode_text(batch["input_ids"], batch["attention_mask"])
        scores = model.score(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"])
        assert scores.shape == (len(image),)
    else:
        if isinstance(model, protocols.PairScorer):  # an ITM head
            assert model.score(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"]).shape == (4,)
        if isinstance(model, protocols.AnswerClassifier):
            logits = model.answer_logits(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"])
            assert logits.shape == (4, len(model.answers))
        return
    for vectors in (image, text):
        torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(len(vectors)))


def test_save_load_and_measure_again_round_trips(built, tok, tmp_path):
    name, model, _, bench = built
    measured = REGISTRY[name].measure(model.eval(), tok, bench)
    assert measured and all(math.isfinite(v) for v in measured.values())
    path = zoo.save_model("round-trip", model, measured, strategy=name, root=tmp_path, dtype=None)
    loaded, record = zoo.load_model(path)
    assert type(loaded) is type(model) and record["strategy"] == name
    assert REGISTRY[name].measure(loaded.eval(), tok, bench) == measured


def test_building_a_model_leaves_its_frozen_parts_as_loaded(built):
    """A frozen part is loaded at its pinned weights, never drawn: building a second model (another seed) must not
    change it, in either model (a weight init that walks every submodule would re-draw a tower assigned before it)."""
    name, model, _, _ = built
    parts = model.frozen_parts() if hasattr(model, "frozen_parts") else {}
    if not parts:
        pytest.skip(f"{name} has no frozen part")
    before = {part: {k: v.clone() for k, v in module.state_dict().items()} for part, module in parts.items()}
    torch.manual_seed(1)
    again = type(model).from_config(model.config.to_dict())
    for part, state in before.items():
        for copy in (model, again):
            now = copy.frozen_parts()[part].state_dict()
            assert all(torch.equal(now[k], v) for k, v in state.items()), f"{name}: its frozen {part} changed"
