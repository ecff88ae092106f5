"""Side runs for notebook 02's open problem, shape from pixels: does CLIP's image tower read shape once its 16 px
patches fall on the world's cells? Shapes World draws its objects in a 3 x 3 grid of cells; at 64 px a cell is
21.3 px, so a 16 px patch grid (4 x 4) cuts most objects in two or four. Resized to 48 px, each cell is one
patch. The run continues notebook 02's shipped CLIP (`clip-shapes`, both towers learned from pixels, no label;
the recorded results continue the 64 px one shipped until commit 5e12751, today's is trained at 48 px)
for the same number of steps at 64 px (the control) and at 48 px (position embeddings interpolated from 4 x 4 to
3 x 3), then measures it with `clip.measure` and with linear probes of shape and colour on its frozen image
embedding and CLS vector (3,000 labelled one-object training scenes, 1,000 test scenes: how much shape the image
side holds, whatever the text side makes of it).

    python research/clip_patch_alignment.py --image-size 64      # the control: 600 more steps as notebook 02 trains
    python research/clip_patch_alignment.py --image-size 48      # the same steps, one patch per cell
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --negclip-steps 80
        # notebook 02's main run and its NegCLIP fine-tune, at 48 px
    python research/clip_patch_alignment.py --negclip            # NegCLIP's hard negative captions in every batch
    python research/clip_patch_alignment.py --canonical          # its control: the canonical captions, no negatives
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --negclip --negative-kinds object_replacement
        # the main run with one negative per caption from the first step, always a shape replaced by an absent one
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --freeze-patch-embed
        # the main run with the MAE's patch projection kept as it starts
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --caption-weight 1
        # CoCa's idea: the same run with a captioning loss added, a PrefixLM (notebook 03's, started from the tiny
        # GPT) writing each scene's canonical caption from the image tower's 9 patch vectors
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --image-lr-scale 0.25
        # the main run with the MAE-started image tower at a quarter of the rate (the text tower and heads at the rate)
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --eval-every 150
        # the main run, measured every 150 steps: when does zero-shot colour come, and does it stay?
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --text-start tiny-lm --eval-every 150
        # the same with the text tower started from notebook 01's tiny LM, which read the world's questions too
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --drop-attributes 0.5 [--draws 4]
        # the main run on captions that leave each object's size and colour out with probability 0.5 ('a star left of
        # a red circle'), one such caption per scene or four drawn afresh, one read per visit; the results add
        # zero-shot shape inside the object's own caption (`harness.zero_shot_in_caption`)
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --drop-attributes 0.5 --draws 2 --keep-original
        # the same with the scene's own caption as one of the two draws: at each visit, the whole caption or one that
        # leaves words out, each half the time (LaCLIP, Fan et al. 2023, picks between a text and its rewrites so)
    python research/clip_patch_alignment.py --start tiny-vit-mae --steps 1200 --drop-attributes 0.5 --both
        # every step reads each scene's whole caption and one that leaves words out, CLIP's loss on each, averaged
    python research/clip_patch_alignment.py --neighbours 8
        # batches of caption neighbours: groups of 8 scenes whose canonical captions share the most words (TF-IDF
        # cosine over a random pool of 4,096), a label-free way to put near-identical scenes in one batch

Each run writes research/results/clip_patch_alignment/<name>.json.
"""

import argparse
import random
import time
from itertools import islice

import numpy as np
import torch
from common import resized, save_result
from patch_probe import last_block_shape
from prefix_lm_from_pixels import PatchTokens
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from vlmlab import harness, unimodal, zoo
from vlmlab import nn as vnn
from vlmlab.data import evalsets, language, shapes
from vlmlab.data.loaders import ShapesDataset, StepBatches, encode_texts, indexed_collate, negatives_collate, to_float
from vlmlab.protocols import caption_loss
from vlmlab.strategies import clip, prefix_lm
from vlmlab.tokenizer import load_tokenizer
from vlmlab.train import fit


def started_clip(start: str, size: int, seed: int, text_start: str | None = None) -> clip.CLIP:
    """A CLIP reading `size` px images (`vlmlab.nn.resized_vit`): notebook 02's shipped one continued
    (`clip-shapes`), or a fresh one whose image tower starts from notebook 01's label-free MAE ViT (`tiny-vit-mae`),
    as notebook 02's main run does. `text_start="tiny-lm"` starts the fresh one's text tower from notebook 01's
    tiny LM, pre-trained on all of the world's text (its causal transformer; CLIP pools at <eos> as before);
    "tiny-lm-shape" gives it the tiny LM's size with random weights (the control)."""
    shipped = zoo.load_model("clip-shapes")[0]
    if start == "clip-shapes":
        shipped.image_tower = vnn.resized_vit(shipped.image_tower, size)
        shipped.config.vision = shipped.image_tower.config
        return shipped
    shipped.config.vision.image_size = size
    lm = unimodal.build_tiny("tiny-lm") if text_start else None
    if lm is not None:
        shipped.config.text = lm.config
    torch.manual_seed(seed)
    model = clip.CLIP(shipped.config)
    model.image_tower.load_state_dict(vnn.resized_vit(unimodal.build_tiny("tiny-vit-mae"), size).state_dict())
    if text_start == "tiny-lm":
        model.text_tower.load_state_dict(lm.transformer.state_dict())
    return model


class CoCa(torch.nn.Module):
    """CLIP and a PrefixLM captioner that reads its image tower's patch vectors, trained together (CoCa, Yu et al.
    2022, from this workbook's parts: the captioner is notebook 03's, started from the tiny GPT)."""

    def __init__(self, model: clip.CLIP, tok):
        super().__init__()
        tower = model.image_tower
        config = prefix_lm.Config(vocab_size=len(tok), vision_dim=tower.config.dim, n_image_tokens=tower.patch_embed.n_patches,
                                  text_len=32, stem="conv", image_size=tower.config.image_size)
        self.clip, self.captioner = model, prefix_lm.from_text_lm(config, unimodal.build_tiny("tiny-gpt"))
        self.captioner.stem = PatchTokens(tower)  # the same tower: the caption loss reaches it


def coca_loss(weight: float):
    """CLIP's loss plus `weight` times the captioner's next-token loss on the batch's canonical captions."""
    def loss(model: CoCa, batch: dict):
        contrastive, logs = clip.batch_loss(model.clip, batch)
        captioning, _ = caption_loss(model.captioner, {"images": batch["images"], **batch["caption"]})
        return contrastive + weight * captioning, logs | {"caption_loss": captioning.item()}
    return loss


def with_captions(collate, captions):
    """`collate` with each row's canonical caption for the captioner ({"caption": input_ids, attention_mask, labels})."""
    def both(rows):
        batch = collate(rows)
        batch["caption"] = {"input_ids": captions.input_ids[rows], "attention_mask": captions.attention_mask[rows],
                            "labels": captions.labels[rows]}
        return batch
    return both


def neighbour_batches(train, collate, batch: int, group: int, seed: int, pool: int = 4096):
    """Batches of `batch // group` random anchors, each with its `group - 1` nearest captions in a random pool."""
    words = TfidfVectorizer().fit_transform([language.caption(s) for s in train.scenes])

    def batches(step: int):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed * 100_003 + step)).numpy()
        anchors, rest = order[: batch // group], order[batch // group: pool]
        closest = np.argsort(-(words[anchors] @ words[rest].T).toarray(), axis=1)  # [anchors, pool - anchors]
        chosen = [int(i) for i in anchors]
        taken = set(chosen)
        for row in closest:
            picked = list(islice((int(rest[j]) for j in row if int(rest[j]) not in taken), group - 1))
            chosen += picked
            taken.update(picked)
        return collate(chosen[:batch])

    return batches


@torch.no_grad()
def probes(model: clip.CLIP, size: int, seed: int) -> dict[str, float]:
    """Linear probes (logistic regression) of shape and colour on the frozen image embedding and CLS vector; at 48 px,
    probes of each occupied cell's shape on its own patch vector (last block), linear and with a hidden layer."""
    train, test = evalsets.single_objects(seed, 3000, "train"), evalsets.single_objects(seed, 1000, "test")
    reads = {"embed": lambda x: harness.embed_images(model, x),
             "cls": lambda x: torch.cat([model.image_tower(to_float(c)).cls for c in x.split(500)])}
    images = [resized(evalsets.images_of(scenes), size) for scenes in (train, test)]
    out = {}
    for name, read in reads.items():
        x_train, x_test = (read(x).numpy() for x in images)
        for attr in ("shape", "color"):
            y_train, y_test = ([getattr(s.objects[0], attr) for s in scenes] for scenes in (train, test))
            out[f"probe_{attr}_{name}"] = LogisticRegression(max_iter=2000).fit(x_train, y_train).score(x_test, y_test)
    if size == 48:  # one patch per cell: each cell's shape from its own patch vector (research/patch_probe.py)
        out |= {f"probe_cell_shape_{kind}": last_block_shape(model.image_tower, seed, hidden)
                for kind, hidden in (("linear", 0), ("mlp", 512))}
    return out


def run_name(args) -> str:
    """The results file's name: the start, size and steps, then a suffix for each setting that is not the default."""
    suffixes = ((args.neighbours, f"_neighbours{args.neighbours}"), (args.negclip, "_negclip"),
                (args.negative_kinds != "all", f"-{args.negative_kinds}"), (args.canonical, "_canonical"),
                (args.drop_attributes, f"_drop{args.drop_attributes:g}"),
                (args.draws != 1, f"_draws{args.draws}"), (args.keep_original, "_keep-original"),
                (args.both, "_both"),
                (args.freeze_patch_embed, "_frozen_patch_embed"), (args.negclip_steps, f"_then_negclip{args.negclip_steps}"),
                (args.negclip_lr != 5e-4, f"_lr{args.negclip_lr:g}"), (args.caption_weight, f"_caption{args.caption_weight:g}"),
                (args.image_lr_scale != 1, f"_imagelr{args.image_lr_scale:g}"),
                (args.text_lr_scale != 1, f"_textlr{args.text_lr_scale:g}"), (args.eval_every, f"_curve{args.eval_every}"),
                (args.text_start, f"_text-{args.text_start}"), (args.seed, f"_seed{args.seed}"),
                (args.save, f"_saved-{args.save}"))
    return f"{args.start}_size{args.image_size}_{args.steps}" + "".join(suffix for chosen, suffix in suffixes if chosen)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image-size", dest="image_size", type=int, default=48)
    p.add_argument("--start", default="clip-shapes", choices=("clip-shapes", "tiny-vit-mae"))
    p.add_argument("--text-start", dest="text_start", default=None, choices=("tiny-lm", "tiny-lm-shape"),
                   help="with --start tiny-vit-mae: the text tower starts from notebook 01's tiny LM, or has its size "
                        "with random weights (default: notebook 02's smaller tower, random)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--neighbours", type=int, default=0, help="group size of caption-neighbour batches (0: random)")
    p.add_argument("--negclip", action="store_true", help="canonical captions, each with one hard negative (notebook 02)")
    p.add_argument("--canonical", action="store_true", help="canonical captions, no negatives: --negclip's control")
    p.add_argument("--negative-kinds", dest="negative_kinds", default="all", choices=("all", "object_replacement"),
                   help="with --negclip: the hard negatives drawn (object_replacement: one object's shape replaced by "
                        "an absent one, the only kind a one-object scene has)")
    p.add_argument("--negclip-steps", dest="negclip_steps", type=int, default=0,
                   help="then NegCLIP's fine-tune for this many steps, as notebook 02 does (80)")
    p.add_argument("--negclip-lr", dest="negclip_lr", type=float, default=5e-4, help="its learning rate (notebook 02: 5e-4)")
    p.add_argument("--drop-attributes", dest="drop_attributes", type=float, default=0.0,
                   help="leave each object's size and colour out of its training caption with this probability")
    p.add_argument("--draws", type=int, default=1,
                   help="with --drop-attributes: this many captions of each scene, one picked at each visit")
    p.add_argument("--keep-original", dest="keep_original", action="store_true",
                   help="with --drop-attributes: the first of the --draws captions is the scene's own, nothing left out "
                        "(LaCLIP's choice between the original text and its rewrites at each visit)")
    p.add_argument("--both", action="store_true",
                   help="with --drop-attributes: each step reads every scene's whole caption and one that leaves words "
                        "out, CLIP's loss averaged over the two (one more text pass a step)")
    p.add_argument("--n-train", dest="n_train", type=int, default=30_000)
    p.add_argument("--freeze-patch-embed", dest="freeze_patch_embed", action="store_true",
                   help="keep the image tower's patch projection as it starts (MoCo v3's trick, Chen et al. 2021)")
    p.add_argument("--image-lr-scale", dest="image_lr_scale", type=float, default=1.0,
                   help="the image tower's rate as a fraction of --lr (MAE fine-tuning steps its trained layers slower)")
    p.add_argument("--text-lr-scale", dest="text_lr_scale", type=float, default=1.0,
                   help="the text tower's rate as a fraction of --lr (for a text tower started from the tiny LM)")
    p.add_argument("--caption-weight", dest="caption_weight", type=float, default=0.0,
                   help="add a captioning loss with this weight (CoCa): a PrefixLM reading the image tower's patches")
    p.add_argument("--save", default=None,
                   help="save the trained CLIP under this name in the user cache ($VLMLAB_CACHE), for the recipes "
                        "that read a tower (`--tower clip:NAME`)")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=0,
                   help="also measure retrieval and zero-shot every N steps of the run (the curve; 0: only at the end)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.text_start and args.start != "tiny-vit-mae":
        p.error("--text-start starts a fresh CLIP's text tower: use it with --start tiny-vit-mae")
    if args.drop_attributes and (args.negclip or args.caption_weight):
        p.error("--drop-attributes changes the paraphrased captions: use it without --negclip and --caption-weight")
    if args.draws < 1 or (args.draws > 1 and not args.drop_attributes):
        p.error("--draws must be at least 1, and above 1 only with --drop-attributes")
    if args.both and (not args.drop_attributes or args.keep_original or args.draws > 1):
        p.error("--both reads the whole caption beside one that leaves words out: use it with --drop-attributes alone")
    if args.keep_original and args.draws < 2:
        p.error("--keep-original keeps one of the --draws captions whole: use it with --draws 2 or more")
    if args.negative_kinds != "all" and not args.negclip:
        p.error("--negative-kinds picks --negclip's negatives: use it with --negclip")

    tok = load_tokenizer()
    train = ShapesDataset(shapes.ShapesWorld(seed=args.seed), "train", args.n_train, paraphrase=True)
    images = resized(train.images, args.image_size)
    texts = [language.caption(s) for s in train.scenes] if args.canonical else [train.text(i) for i in range(len(train))]
    whole_texts = texts
    if args.drop_attributes:  # `draws` captions of each scene, each leaving out its own words; one read per visit
        rng = random.Random(f"leave-out:{args.seed}")
        kept = 1 if args.keep_original else 0  # draws left whole
        texts = texts * kept + [language.leaving_out(s, text, args.drop_attributes, rng)
                                for _ in range(args.draws - kept) for s, text in zip(train.scenes, texts)]  # [draws * N]
    rows = torch.arange(len(images)).repeat(len(texts) // len(images))  # text -> its image
    collate = indexed_collate(images, encode_texts(tok, texts, max_length=40), rows=rows)
    if args.both:
        left_out, whole = collate, indexed_collate(images, encode_texts(tok, whole_texts, max_length=40))
        collate = lambda scenes: whole(scenes) | {"left_out": left_out(scenes)}
    if args.caption_weight:
        canonical = [language.caption(s) for s in train.scenes]
        collate = with_captions(collate, encode_texts(tok, [""] * len(canonical), canonical, max_length=32))
    kinds = language.NEGATIVE_KINDS if args.negative_kinds == "all" else (args.negative_kinds,)
    items = [{"index": i, "image": images[i], "text": language.caption(s),
              "negatives": [n.text for n in language.hard_negatives(s, kinds)]} for i, s in enumerate(train.scenes)]
    negclip_batches = lambda seed: StepBatches(items, args.batch, negatives_collate(tok, max_length=40), seed=seed)
    loss = clip.negclip_batch_loss if args.negclip else clip.both_captions_loss if args.both else clip.batch_loss
    if args.negclip:
        batches = negclip_batches(args.seed)
    elif args.neighbours:
        batches = neighbour_batches(train, collate, args.batch, args.neighbours, args.seed)
    else:
        def batches(step: int) -> dict:  # a random batch of scenes, each with one of its drawn captions
            g = torch.Generator().manual_seed(args.seed * 100_003 + step)
            scenes = torch.randperm(len(images), generator=g)[: args.batch]
            draw = torch.randint(len(rows) // len(images), scenes.shape, generator=g)  # 0 with one caption a scene
            return collate((scenes + len(images) * draw).tolist())
    model = started_clip(args.start, args.image_size, args.seed, args.text_start)
    model.image_tower.patch_embed.requires_grad_(not args.freeze_patch_embed)
    bench = evalsets.DualEncoderBench.build(args.seed, 1000)
    bench.images.update({k: resized(v, args.image_size) for k, v in bench.images.items()})
    before = probes(model.eval(), args.image_size, args.seed)

    start = time.perf_counter()
    trained, loss = (CoCa(model, tok), coca_loss(args.caption_weight)) if args.caption_weight else (model, loss)
    names = {module: name for name, module in trained.named_modules()}
    scales = {names[model.image_tower]: args.image_lr_scale, names[model.text_tower]: args.text_lr_scale}
    curve_keys = ("t2i_r1", "zs_color_acc", "zs_shape_acc", "zs_color_acc_vocab", "relation_swap_acc")
    during = (lambda _: {k: clip.measure(model, tok, bench)[k] for k in curve_keys}) if args.eval_every else None
    history = fit(trained, loss, batches, steps=args.steps, lr=args.lr, weight_decay=0.1,
                  lr_scales=scales, eval_fn=during, eval_every=args.eval_every, seed=args.seed,
                  progress=False)
    train_s = time.perf_counter() - start  # with the curve's measurements, when --eval-every asks for them
    measured = clip.measure(model.eval(), tok, bench)
    keys = ("t2i_r1", "i2t_r1", "zs_color_acc", "zs_shape_acc", "zs_color_acc_vocab", "zs_shape_acc_vocab",
            "relation_swap_acc", "attribute_swap_acc", "heldout_combo_acc")
    result = {"args": vars(args), "train_s": round(train_s, 1), "final_temperature": model.temperature,
              **{k: measured[k] for k in keys}, "zs_shape_acc_in_caption": harness.zero_shot_in_caption(
                  model, tok, harness.embed_images(model, bench.images["single"]), bench.single, "shape"),
              **probes(model, args.image_size, args.seed), "before": before,
              **({"curve": history.as_dict()["evals"]} if args.eval_every else {})}
    if args.save:
        zoo.save_model(args.save, model, {k: measured[k] for k in keys}, strategy="clip")
    if args.negclip_steps:
        fit(model, clip.negclip_batch_loss, negclip_batches(args.seed + 1), steps=args.negclip_steps, lr=args.negclip_lr,
            weight_decay=0.1, seed=args.seed, progress=False)
        after = clip.measure(model.eval(), tok, bench)
        result["after_negclip"] = {k: after[k] for k in keys} | probes(model, args.image_size, args.seed)
    save_result(__file__, run_name(args), result)


if __name__ == "__main__":
    main()
