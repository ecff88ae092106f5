"""SigLIP (notebook 02): the pairwise sigmoid loss equals Hugging Face SiglipModel's on the same embeddings, scale
and bias; a CLIP with loss="sigmoid" learns its bias; hand-made cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from transformers import SiglipConfig, SiglipModel

from vlmlab.data.loaders import ShapesDataset, caption_collate, to_float
from vlmlab.data.shapes import ShapesWorld
from vlmlab.nn import TextConfig, ViTConfig
from vlmlab.strategies.clip import CLIP, Config, batch_loss, sigmoid_loss
from vlmlab.train import fit


@pytest.fixture(scope="module")
def hf_siglip():
    torch.manual_seed(0)
    config = SiglipConfig(
        text_config={"vocab_size": 50, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 8},
        vision_config={"image_size": 16, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2})
    return SiglipModel(config).eval()


def test_sigmoid_loss_matches_hf_siglip_on_its_own_forward(hf_siglip):
    """HF computes the loss inside forward(return_loss=True) from its embeddings, logit_scale and logit_bias."""
    with torch.no_grad():
        hf_siglip.logit_scale.fill_(math.log(10.0))
        hf_siglip.logit_bias.fill_(-3.0)
        out = hf_siglip(input_ids=torch.randint(0, 50, (6, 8)), pixel_values=torch.randn(6, 3, 16, 16), return_loss=True)
    logits = 10.0 * out.image_embeds @ out.text_embeds.T - 3.0  # [images, texts]
    assert_close(logits, out.logits_per_image, atol=1e-5, rtol=1e-5)
    assert_close(sigmoid_loss(logits), out.loss, atol=1e-5, rtol=1e-5)


def test_sigmoid_loss_by_hand():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    expected = -(F.logsigmoid(torch.tensor(2.0)) + F.logsigmoid(torch.tensor(1.0))  # image 0: its text, not text 1
                 + F.logsigmoid(torch.tensor(-0.5)) + F.logsigmoid(torch.tensor(3.0))) / 2
    assert_close(sigmoid_loss(logits), expected)
    with pytest.raises(ValueError, match="square"):
        sigmoid_loss(torch.zeros(2, 3))


def tiny_config(tok, **kw):
    return Config(vision=ViTConfig(image_size=64, patch_size=16, dim=32, depth=1, n_heads=2),
                  text=TextConfig(vocab_size=len(tok), max_len=24, dim=32, depth=1, n_heads=2, causal=True),
                  embed_dim=16, **kw)


def test_a_sigmoid_clip_has_a_bias_in_its_logits_and_learns_it(tok):
    torch.manual_seed(0)
    model = CLIP(tiny_config(tok, loss="sigmoid", init_temperature=0.1, init_bias=-10.0))
    assert not hasattr(CLIP(tiny_config(tok)), "logit_bias")
    data = ShapesDataset(ShapesWorld(seed=0), "train", 8)
    batch = caption_collate(tok)([data[i] for i in range(8)])
    logits, _ = model(to_float(batch["images"]), batch["input_ids"], batch["attention_mask"])
    assert logits.max() < -10 + 10 + 1e-4  # scale 10 x cos <= 10, bias -10
    loss, logs = batch_loss(model, batch)
    assert set(logs) == {"temperature", "bias"} and logs["bias"] == -10.0
    history = fit(model, lambda m, b: batch_loss(m, b)[0], lambda s: batch, steps=40, lr=3e-3, seed=0, progress=False)
    assert history.loss[-1] < 0.5 * history.loss[0]
    assert model.logit_bias.item() != -10.0  # the bias is a parameter, and moved


def test_loss_name_is_checked(tok):
    with pytest.raises(ValueError, match="loss"):
        tiny_config(tok, loss="hinge")
