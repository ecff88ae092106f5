"""Side runs for notebook 04: which mapper, on label-free vision, lets the frozen tiny LM caption the Shapes World?

    python research/frozen_lm_captioning.py --arm clipcap-mlp --steps 600
    python research/frozen_lm_captioning.py --arm mapl --steps 600
    python research/frozen_lm_captioning.py --arm frozen --steps 600
    python research/frozen_lm_captioning.py --arm grid-list --steps 1600 --hidden 64 --dim 128

Arms: clipcap-mlp (CLIP image embedding -> MLP -> k vectors), clipcap-transformer (the embedding as one token, k
learned queries), mapl (all CLIP-ViT tokens, k learned queries), frozen (the CLIP ViT trains, each token mapped
linearly), linear (the same with the ViT frozen: LiMBeR's linear map, LLaVA's first projector), deep (all tokens -> k
keys and values per layer), grid-list (each token through one shared MLP, then an MLP over all of them into the object
list's deep prefix: `frozen_prefix.GridListMapper`, no paper's mapper). Writes research/results/frozen_lm_captioning/<name>.json.
"""

import argparse
import time

import torch
from common import save_result

from vlmlab import evaluate, frozen, harness, unimodal, zoo
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import StepBatches, encode_texts, indexed_collate, to_float
from vlmlab.generation import generate_text
from vlmlab.lm import load_language_model
from vlmlab.strategies import frozen_prefix
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


class Tokens(torch.nn.Module):
    """CLIP's image tower, read as all its tokens [B, 17, D] (it trains in the frozen arm)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, pixels):
        return self.vit(pixels).hidden


class LinearTokens(torch.nn.Module):
    deep = False

    def __init__(self, d_in, d_out):
        super().__init__()
        self.proj = torch.nn.Linear(d_in, d_out)

    def forward(self, x):
        return self.proj(x)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arm", default="clipcap-mlp")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="the ClipCap MLP's hidden width (notebook 04: 64); grid-list: "
                   "its MLP over all the tokens")
    p.add_argument("--dim", type=int, default=64, help="the transformer mappers' width; grid-list: its MLP on each token")
    p.add_argument("--depth", type=int, default=1, help="the transformer mappers' blocks (notebook 04: 1, its gpu profile 2)")
    p.add_argument("--n-train", dest="n_train", type=int, default=20_000)
    p.add_argument("--n-eval", dest="n_eval", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lm", default="tiny-lm")
    p.add_argument("--vision", default="clip", help="clip (notebook 02, no label) | detector (notebook 01, labels)")
    p.add_argument("--name", default=None)
    p.add_argument("--questions", action="store_true", help="train on each scene's caption and one question (notebook "
                   "04's texts) and measure VQA too: the arms that read CLIP's tokens")
    args = p.parse_args()
    if args.questions and (args.arm not in ("mapl", "linear", "deep", "grid-list") or args.vision != "clip"):
        p.error("--questions: only the arms that read CLIP's tokens (mapl, linear, deep, grid-list), --vision clip")
    torch.manual_seed(args.seed)
    tok = load_tokenizer()
    clip = zoo.load_model("clip-shapes")[0].eval().requires_grad_(args.arm == "frozen")  # only Frozen trains the tower
    if args.vision == "detector":
        clip.image_tower.load_state_dict(unimodal.build_tiny("tiny-vit-detector").state_dict())
    lm = load_language_model({"name": args.lm, "sha256": None})
    scenes = shapes.ShapesWorld(seed=args.seed).scenes(args.n_train, "train")
    images = evalsets.images_of(scenes)
    test = evalsets.generation_scenes(args.seed, args.n_eval)
    test_images = evalsets.images_of(test)

    @torch.no_grad()
    def feats(imgs):
        if args.arm.startswith("clipcap"):
            e = torch.cat([clip.encode_image(to_float(c)) for c in imgs.split(512)])
            return e if args.arm == "clipcap-mlp" else e[:, None]
        return torch.cat([clip.image_tower(to_float(c)).hidden for c in imgs.split(512)])

    captions = [language.caption(s) for s in scenes]
    rows = None  # the scene of every text, when a scene has more than one
    if args.questions:
        qas = [language.sample_vqa(s, 1, salt="train")[0] for s in scenes]
        prompts, targets = [""] * len(scenes) + [qa.question for qa in qas], captions + [" " + qa.answer for qa in qas]
        rows = torch.arange(len(scenes)).repeat(2)
    else:
        prompts, targets = [""] * len(scenes), captions
    text = encode_texts(tok, prompts, targets, max_length=lm.max_len - args.k)
    D = clip.config.vision.dim
    if args.arm == "frozen":
        config = frozen_prefix.Config(mapper=None, in_dim=D, k=17, lm=lm.ref, train_vision=True)
        model = frozen_prefix.PrefixCaptioner(config, lm=lm, vision=Tokens(clip.image_tower), mapper=LinearTokens(D, lm.dim))
        collate = indexed_collate(images, text)
        test_in = test_images
    else:
        x = feats(images)
        in_dim = x.shape[-1]
        kind = {"clipcap-mlp": "mlp", "clipcap-transformer": "transformer", "mapl": "transformer", "deep": "deep",
                "linear": "linear", "grid-list": "grid-list"}[args.arm]
        k = {"deep": 4, "grid-list": 3, "linear": x.shape[1]}.get(kind, args.k)  # linear: one prefix vector per token
        config = frozen_prefix.Config(mapper=kind, in_dim=in_dim, k=k, hidden=args.hidden, dim=args.dim, depth=args.depth,
                                      n_tokens=x.shape[1], lm=lm.ref)
        tokens = unimodal.vision_tower({"tower": "clip", "name": "clip-shapes"}) if args.questions else None  # for VQA
        model = frozen_prefix.PrefixCaptioner(config, lm=lm, vision=tokens)
        collate = indexed_collate(x, text, key="image_features", rows=rows)
        test_in = feats(test_images)
    start = time.perf_counter()
    fit(model, frozen_prefix.batch_loss, StepBatches(range(len(targets)), args.batch, collate, seed=args.seed),
        steps=args.steps, lr=args.lr, seed=args.seed, progress=False)
    seconds = time.perf_counter() - start
    model.eval()
    if args.arm == "frozen":
        test_in = harness.image_features(model, test_images)
    said = generate_text(model, tok, test_in)
    r = evaluate.caption_scores(said, test)
    novel = evalsets.novel(test, scenes)  # test scenes whose graph no training scene has
    r_novel = evaluate.caption_scores([said[i] for i in novel], [test[i] for i in novel])
    vqa = harness.suite(model, tok, "vqa", evalsets.SceneBench.build(args.seed, args.n_eval)) if args.questions else {}
    parts = {"vision": model.vision if args.arm == "frozen" else clip.image_tower, "mapper": model.mapper, "lm": lm}
    total = frozen.parameter_table(parts)[-1]
    for s, c in list(zip(test, said))[:4]:
        print(repr(language.caption(s)), "->", repr(c))
    save_result(__file__, args.name or f"{args.arm}-{args.vision}-{args.steps}", {
        "arm": args.arm, "vision": args.vision, "steps": args.steps, "lr": args.lr, "k": model.config.k,
        "hidden": args.hidden, "dim": args.dim, "depth": args.depth, "seed": args.seed, "lm": args.lm,
        "seconds": round(seconds, 1), "scene_f1": round(r["f1"], 4), "attr_f1": round(r["attr_f1"], 4),
        "exact": round(r["exact"], 4), "novel_scene_f1": round(r_novel["f1"], 4), "n_novel": len(novel),
        "trainable_fraction": round(total["trainable"] / total["params"], 4), "questions": args.questions,
        **{key: round(value, 4) for key, value in vqa.items()}})


if __name__ == "__main__":
    main()
