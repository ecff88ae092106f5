"""A byte-level BPE tokenizer for the Shapes World (and any extra text), with the special tokens
every notebook needs. Introduced in notebook 00.

Trained with Hugging Face `tokenizers`, saved in `data/tokenizer/` and loaded as a
`transformers.PreTrainedTokenizerFast`, so it works with any Hugging Face code. Byte-level
means any string round-trips exactly (`decode(encode(s)) == s`) and there is no unknown token.
Beginning/end tokens are added explicitly by the collators, not hidden inside `encode`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .data.language import END_OF_CHUNK, IMAGE_TOKEN, fewshot_sequence, scene_texts
from .data.shapes import ShapesWorld

PAD, BOS, EOS, MASK, CLS, SEP = "<pad>", "<bos>", "<eos>", "[MASK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = [PAD, BOS, EOS, IMAGE_TOKEN, END_OF_CHUNK, MASK, CLS, SEP]  # ids 0..7, in this order
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "data" / "tokenizer"


def shapes_corpus(n_scenes: int = 2000, seed: int = 0) -> list[str]:
    """All text the Shapes World produces for `n_scenes` training scenes, plus few-shot prompts."""
    world = ShapesWorld(seed=seed)
    scenes = world.scenes(n_scenes)
    texts = [t for s in scenes for t in scene_texts(s)]
    texts += [fewshot_sequence(scenes[i : i + 2], scenes[i + 2], task)[0] for i in range(0, 60, 3) for task in ("caption", "vqa")]
    return texts


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; the special tokens get ids 0..7."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap(tok)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """Expose a raw `tokenizers.Tokenizer` as a `PreTrainedTokenizerFast` with our special tokens."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        mask_token=MASK,
        cls_token=CLS,
        sep_token=SEP,
        additional_special_tokens=[IMAGE_TOKEN, END_OF_CHUNK],
        clean_up_tokenization_spaces=False,
    )


def build_default(extra_texts: Iterable[str] = (), vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The shipped tokenizer: Shapes World text (seed 0, 2000 scenes) plus any extra corpus."""
    return train_tokenizer([*shapes_corpus(), *extra_texts], vocab_size)


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer folder (default: the shipped `data/tokenizer/`)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"{path / 'tokenizer.json'} not found: build it with "
            "`python -c 'from vlmlab.tokenizer import build_default; build_default().save_pretrained(\"data/tokenizer\")'`"
        )
    return PreTrainedTokenizerFast.from_pretrained(str(path))
