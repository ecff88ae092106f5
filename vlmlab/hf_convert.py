"""Hugging Face weights -> vlmlab classes: GPT-2 and ViT. Introduced in notebook 01.

The parity tests copy a small random Hugging Face model into ours and check that the same weights give the same
numbers; the same functions load real hub checkpoints when the hub is reachable. Notebook 02's `CLIPModel`
converter (`strategies.clip.from_hf_clip`) reuses `hf_block_state`.
"""

from __future__ import annotations

import torch
from torch import nn

from .nn import CausalLM, TextConfig, ViT, ViTConfig
from .params import require


def load_exactly(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Load `state` into `model`; every parameter must be given, with the right shape."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: conversion is incomplete: missing {missing}, unexpected {unexpected}")
    return model


def from_hf_gpt2(hf_model) -> CausalLM:
    """Copy a `transformers.GPT2LMHeadModel` into a CausalLM that gives the same logits. Introduced in notebook 01.

    GPT-2's linear layers are `Conv1D` with weights stored [in, out]: we transpose them. Its fused c_attn
    splits into our q and kv. "gelu_new" is the tanh approximation of GELU. Our single dropout takes resid_pdrop.
    """
    from transformers import GPT2LMHeadModel

    require(isinstance(hf_model, GPT2LMHeadModel), "hf_model", type(hf_model).__name__, "a transformers.GPT2LMHeadModel")
    c = hf_model.config
    activations = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    require(c.activation_function in activations, "config.activation_function", c.activation_function,
           f"one of {list(activations)}")
    require(c.scale_attn_weights and not c.scale_attn_by_inverse_layer_idx and not c.add_cross_attention, "config",
           "non-standard attention", "scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, no cross-attention")
    D, hidden = c.n_embd, c.n_inner or 4 * c.n_embd
    config = TextConfig(vocab_size=c.vocab_size, max_len=c.n_positions, dim=D, depth=c.n_layer, n_heads=c.n_head,
                        mlp_ratio=hidden / D, dropout=c.resid_pdrop, causal=True, norm_eps=c.layer_norm_epsilon,
                        activation=activations[c.activation_function],
                        pad_token_id=c.pad_token_id if c.pad_token_id is not None else 0)
    hf = hf_model.transformer.state_dict()
    state = {"transformer.tok_emb.weight": hf["wte.weight"], "transformer.pos_emb.weight": hf["wpe.weight"],
             "transformer.norm.weight": hf["ln_f.weight"], "transformer.norm.bias": hf["ln_f.bias"]}
    for i in range(c.n_layer):
        h, ours = f"h.{i}.", f"transformer.blocks.{i}."
        qkv_w, qkv_b = hf[h + "attn.c_attn.weight"].t(), hf[h + "attn.c_attn.bias"]  # [3D, D], [3D]: q, k, v
        state |= {
            ours + "ln1.weight": hf[h + "ln_1.weight"], ours + "ln1.bias": hf[h + "ln_1.bias"],
            ours + "attn.q.weight": qkv_w[:D], ours + "attn.q.bias": qkv_b[:D],
            ours + "attn.kv.weight": qkv_w[D:], ours + "attn.kv.bias": qkv_b[D:],
            ours + "attn.proj.weight": hf[h + "attn.c_proj.weight"].t(), ours + "attn.proj.bias": hf[h + "attn.c_proj.bias"],
            ours + "ln2.weight": hf[h + "ln_2.weight"], ours + "ln2.bias": hf[h + "ln_2.bias"],
            ours + "mlp.fc.weight": hf[h + "mlp.c_fc.weight"].t(), ours + "mlp.fc.bias": hf[h + "mlp.c_fc.bias"],
            ours + "mlp.proj.weight": hf[h + "mlp.c_proj.weight"].t(), ours + "mlp.proj.bias": hf[h + "mlp.c_proj.bias"],
        }
    return load_exactly(CausalLM(config), state, "from_hf_gpt2")


def hf_block_state(hf: dict[str, torch.Tensor], h: str, ours: str, *, ln1: str, ln2: str, attn: str,
                   out: str) -> dict[str, torch.Tensor]:
    """One Hugging Face pre-norm encoder layer (prefix `h`) renamed to a vlmlab Block (prefix `ours`): the
    separate q/k/v projections become our q and fused kv. The names of the norms and of the attention module
    differ between HF models (ViT: layernorm_before / attention / o_proj; CLIP: layer_norm1 / self_attn /
    out_proj)."""
    a = h + attn + "."
    return {
        ours + "ln1.weight": hf[h + ln1 + ".weight"], ours + "ln1.bias": hf[h + ln1 + ".bias"],
        ours + "attn.q.weight": hf[a + "q_proj.weight"], ours + "attn.q.bias": hf[a + "q_proj.bias"],
        ours + "attn.kv.weight": torch.cat([hf[a + "k_proj.weight"], hf[a + "v_proj.weight"]]),
        ours + "attn.kv.bias": torch.cat([hf[a + "k_proj.bias"], hf[a + "v_proj.bias"]]),
        ours + "attn.proj.weight": hf[a + out + ".weight"], ours + "attn.proj.bias": hf[a + out + ".bias"],
        ours + "ln2.weight": hf[h + ln2 + ".weight"], ours + "ln2.bias": hf[h + ln2 + ".bias"],
        ours + "mlp.fc.weight": hf[h + "mlp.fc1.weight"], ours + "mlp.fc.bias": hf[h + "mlp.fc1.bias"],
        ours + "mlp.proj.weight": hf[h + "mlp.fc2.weight"], ours + "mlp.proj.bias": hf[h + "mlp.fc2.bias"],
    }


def from_hf_vit(hf_model) -> ViT:
    """Copy a `transformers.ViTModel` (transformers 5 layout) into a ViT that gives the same last_hidden_state.
    Introduced in notebook 01. HF's ViT is the same design: patch conv, CLS, learned positions, pre-norm
    blocks with exact GELU, final LayerNorm; only the names differ."""
    from transformers import ViTModel

    require(isinstance(hf_model, ViTModel), "hf_model", type(hf_model).__name__, "a transformers.ViTModel")
    c = hf_model.config
    require(c.hidden_act == "gelu", "config.hidden_act", c.hidden_act, "'gelu'")
    require(c.qkv_bias, "config.qkv_bias", c.qkv_bias, "True")
    require(isinstance(c.image_size, int) and isinstance(c.patch_size, int), "config.image_size/patch_size",
           (c.image_size, c.patch_size), "integers (square images and patches)")
    config = ViTConfig(image_size=c.image_size, patch_size=c.patch_size, in_channels=c.num_channels, dim=c.hidden_size,
                       depth=c.num_hidden_layers, n_heads=c.num_attention_heads, mlp_ratio=c.intermediate_size / c.hidden_size,
                       dropout=c.hidden_dropout_prob, norm_eps=c.layer_norm_eps)
    hf = hf_model.state_dict()
    state = {"cls_token": hf["embeddings.cls_token"], "pos_embed": hf["embeddings.position_embeddings"],
             "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
             "norm.weight": hf["layernorm.weight"], "norm.bias": hf["layernorm.bias"]}
    for i in range(c.num_hidden_layers):
        state |= hf_block_state(hf, f"layers.{i}.", f"blocks.{i}.", ln1="layernorm_before", ln2="layernorm_after",
                                attn="attention", out="o_proj")
    return load_exactly(ViT(config), state, "from_hf_vit")
