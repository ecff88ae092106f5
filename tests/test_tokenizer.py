"""The shipped BPE tokenizer (the session fixture `tok` loads it): special tokens and exact round trips on all world
text."""

from transformers import PreTrainedTokenizerFast

from vlmlab.data.language import fewshot_sequence, scene_texts
from vlmlab.data.shapes import SPLITS, ShapesWorld
from vlmlab.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer


def test_shipped_tokenizer_has_the_special_tokens_in_order(tok):
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.mask_token == "[MASK]" and tok.cls_token == "[CLS]" and tok.sep_token == "[SEP]"


def test_round_trip_on_every_kind_of_world_text(tok):
    world = ShapesWorld(seed=11)  # a seed the tokenizer was not trained on
    texts = [t for split in SPLITS for s in world.scenes(30, split) for t in scene_texts(s)]
    texts += [fewshot_sequence(world.scenes(3), world.scene(9), task)[0] for task in ("caption", "vqa")]
    texts += ["anything else: Ünïcode, émoji 🙂, tabs\tand\nnewlines"]
    for text in texts:
        assert tok.decode(tok.encode(text)) == text


def test_special_tokens_are_single_ids_inside_text(tok):
    ids = tok.encode("<image>Output: a red star<|endofchunk|>")
    assert ids[0] == tok.convert_tokens_to_ids("<image>")
    assert ids[-1] == tok.convert_tokens_to_ids("<|endofchunk|>")


def test_world_words_are_single_tokens(tok):
    ids = tok.encode("a large red star left of a small blue circle")
    assert len(ids) == 10


def test_training_is_deterministic_and_saves(tmp_path):
    corpus = ["a red star", "a blue circle left of a red star"] * 50
    a, b = train_tokenizer(corpus, 300), train_tokenizer(corpus, 300)
    assert a.get_vocab() == b.get_vocab()
    a.save_pretrained(tmp_path)
    assert load_tokenizer(tmp_path).encode("a red star") == a.encode("a red star")
