"""One module per vision-language pre-training strategy: the graduated reference of what its notebook builds.

Every strategy module exposes the same names (the contract; README, "How a strategy plugs in"):

    Config        a dataclass with to_dict() / from_dict(): how the model is built, kept in its checkpoint record
    <the models>  nn.Modules built from a Config; `from_config(dict)` rebuilds one from a record
    batch_loss    (model, batch) -> (loss, logs) on the canonical batch keys (`vlmlab.protocols`)
    measure       (model, tokenizer, bench) -> {metric: value}, through `vlmlab.harness.suite`
    TARGETS       {profile: {metric: (comparison, threshold)}}: the one place the notebook's targets live
    SAVED         the checkpoints its notebook ships (`vlmlab.zoo.save_model` / `load_model` / `verify`)

`REGISTRY` lists the strategies; the CLI, the tests, `zoo verify` and the showdown iterate it. `OWNERS` adds
notebook 01's unimodal backbones (not a vision-language strategy, but the zoo holds its checkpoints too).
"""

from .. import unimodal
from . import asif, blip2, clip, flamingo, frozen_prefix, fusion, lit, llava, magic, prefix_lm

REGISTRY = {"clip": clip, "lit": lit, "prefix_lm": prefix_lm, "frozen_prefix": frozen_prefix, "flamingo": flamingo,
            "fusion": fusion, "asif": asif, "magic": magic, "blip2": blip2, "llava": llava}
OWNERS = {"unimodal": unimodal, **REGISTRY}  # every module whose models the checkpoint zoo holds
