"""Shared fixtures: the workbook's tokenizer, a user cache of one's own, and a tiny zoo of notebook-01 backbones
(random weights, small sizes) that strategies can pin by hash, so a test builds and saves a real model in seconds."""

import os
from dataclasses import replace

import pytest
import torch

from vlmlab import zoo
from vlmlab.mlm import MLMHead
from vlmlab.nn import CausalLM, TextConfig, TextTransformer, ViT, ViTConfig
from vlmlab.tokenizer import load_tokenizer
from vlmlab.unimodal import CellProbe, MaskedLM, RegionEncoder

# Two test workers share two cores: each uses one thread, and so does every process they start (notebook kernels,
# the CLI, JupyterLab's kernels). Two processes with two threads each on two cores run several times slower.
torch.set_num_threads(1)
os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def tok():
    return load_tokenizer()


@pytest.fixture
def user_cache(tmp_path, monkeypatch):
    """An empty user cache for this test: checkpoints saved without a root go here, and only the shipped ones
    are found besides."""
    monkeypatch.setenv("VLMLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "checkpoints"


def tiny_text_config(tok, causal: bool) -> TextConfig:
    return TextConfig(vocab_size=len(tok), max_len=40, dim=32, depth=2, n_heads=2, causal=causal)


@pytest.fixture
def tiny_zoo(user_cache, tok):
    """tiny-vit-detector, tiny-vit-detector-probe, tiny-gpt, tiny-lm, tiny-bert and tiny-bert-head with random weights, saved to
    the user cache the way notebook 01 saves them; returns their refs {name: {"name", "sha256"}}."""
    torch.manual_seed(0)
    vit = ViT(ViTConfig(image_size=64, patch_size=16, dim=16, depth=1, n_heads=2))
    gpt, bert = CausalLM(tiny_text_config(tok, True)), TextTransformer(tiny_text_config(tok, False))
    refs = {}

    def save(name, model, strategy="unimodal"):
        path = zoo.save_model(name, model, {}, strategy=strategy, dtype=None)
        refs[name] = {"name": name, "sha256": zoo.read_record(path)["sha256"]}

    save("tiny-vit-detector", vit)
    save("tiny-vit-detector-probe", RegionEncoder(vit, CellProbe(vit.patch_embed.n_patches, 16), refs["tiny-vit-detector"]))
    save("tiny-gpt", gpt)
    save("tiny-lm", CausalLM(replace(tiny_text_config(tok, True), max_len=160)))
    save("tiny-bert", bert)
    save("tiny-bert-head", MaskedLM(bert, MLMHead(32, len(tok)), refs["tiny-bert"]))
    return refs


TINY_VOCAB = 40  # the vocabulary of `tiny_lm`'s models


@pytest.fixture(scope="session")
def tiny_lm():
    """A factory: tiny_lm(seed=0, **config) -> a 2-layer GPT (vocabulary TINY_VOCAB) with large random weights, so its
    greedy choices vary from step to step; in eval mode."""

    def make(seed: int = 0, **kw) -> CausalLM:
        torch.manual_seed(seed)
        model = CausalLM(TextConfig(**{"vocab_size": TINY_VOCAB, "max_len": 32, "dim": 32, "depth": 2, "n_heads": 4} | kw))
        for p in model.parameters():
            if p.ndim >= 2:
                torch.nn.init.normal_(p, std=0.3)
        return model.eval()

    return make
