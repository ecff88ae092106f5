"""Masked language modelling (BERT): the corruption that picks and hides tokens, and the head that predicts them.
Introduced in notebook 01; notebook 06 masks caption words that only the image can fill in.
"""

from __future__ import annotations

import torch
from torch import nn

from .params import require


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm -> decoder to the vocabulary, the decoder weight
    optionally tied to the token embedding. [B, T, D] -> [B, T, V]. Introduced in notebook 01."""

    def __init__(self, dim: int, vocab_size: int, tied_embedding: nn.Embedding | None = None, norm_eps: float = 1e-5):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = nn.GELU()
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.decoder = nn.Linear(dim, vocab_size)
        if tied_embedding is not None:
            shape = tuple(tied_embedding.weight.shape)
            require(shape == (vocab_size, dim), "tied_embedding.weight.shape", shape, f"{(vocab_size, dim)}")
            self.decoder.weight = tied_embedding.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.norm(self.act(self.dense(hidden))))  # [B, T, V]


def mask_tokens(input_ids: torch.Tensor, mask_token_id: int, vocab_size: int, special_ids=(), p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's corruption. Introduced in notebook 01.

    Each token not in `special_ids` is selected with probability p. Labels hold the original id where
    selected and -100 elsewhere. Of the selected tokens 80% become [MASK], 10% a random id from the whole
    vocabulary (as BERT and Hugging Face do) and 10% stay as they are. Returns (inputs, labels), both [B, T].
    """
    require(0 < p <= 1, "p", p, "a probability in (0, 1]")
    device = input_ids.device
    special = torch.isin(input_ids, torch.tensor(list(special_ids), dtype=input_ids.dtype, device=device))
    selected = (torch.rand(input_ids.shape, generator=generator, device=device) < p) & ~special
    labels = input_ids.masked_fill(~selected, -100)
    draw = torch.rand(input_ids.shape, generator=generator, device=device)  # one draw decides 80 / 10 / 10
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=device)
    inputs = input_ids.masked_fill(selected & (draw < 0.8), mask_token_id)
    inputs = torch.where(selected & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return inputs, labels
