"""The notebooks' targets that their shipped models miss, with why (the README's results table says the same).
Tests that compare a shipped model with its targets expect exactly these to be missed: the day one is met, they
fail until its entry is removed."""

KNOWN_MISSES = {  # (strategy owner, metric) -> why the shipped model misses it
    ("frozen_prefix", "caption_f1"): "a light mapper on CLIP's label-free tower steering the frozen tiny LM, 400 steps: "
                                     "0.35 (the detector arm 0.20, the object list 0.83); a scene caption needs every "
                                     "object's shape, colour, size and cell, and shape questions reach 0.30 (blind 0.16)",
    ("frozen_prefix", "vqa_acc"): "colour and size need the image to decide between an attribute and 'there is no ...' and "
                                  "400 steps of prefix move the frozen LM's prior only partly (blind 0.36, kept 0.43; 43% "
                                  "of colour and size questions still get 'there is no ...'); the object list reaches 0.42",
    ("flamingo", "caption_f1"): "gated cross-attention on notebook 02's label-free CLIP grid, 800 steps of 16: count, colour "
                                "and shape are read part of the time (shape questions 0.47, blind 0.14), size hardly (0.15), "
                                "so scene F1, which needs every object's words right, reaches 0.33 (the blind LM 0.085)",
    ("flamingo", "vqa_acc"): "count is read (0.77, blind 0.58), shape (0.47) and colour (0.41) in part, size hardly (0.15); "
                             "colour and size questions name their object by its shape, and the model, when it cannot find "
                             "it, answers 'there is no ...' (52% of them), which also costs the absent-object questions",
    ("blip2", "caption_f1"): "the Q-Former's queries as a soft prompt into the frozen tiny LM after 300 stage-1 and 400 "
                             "stage-2 steps on notebook 02's label-free CLIP tower: 0.32, where the Q-Former's own ITG "
                             "head captions at 0.41 from the same queries; stage 1 does not help stage 2 (0.33 without)",
    ("blip2", "vqa_acc"): "400 stage-2 steps barely move the frozen LM's answers off its prior (blind 0.36, 0.39): count, "
                          "position and size hold, shape (0.27) and colour (0.18) are read a little, absent-object "
                          "questions are lost",
    ("llava", "vqa_acc"): "a projector on notebook 02's label-free CLIP patches and the tiny LM tuned for 600 steps of 16 "
                          "chats: count and position are read, shape barely (0.21), and colour and size questions, which "
                          "name their object by its shape, get 'there is no ...' (85%; 0.45, an empty picture 0.39)",
    ("llava", "pope_acc"): "the model cannot check a colour-shape pair in the picture: it says 'yes' to absent pairs about as "
                           "often as to present ones (0.96 at seed 0), so POPE stays at 0.5",
    ("llava", "description_f1"): "a description needs every object's shape, size and cell; the model reads count and "
                                 "layout from the tower, so descriptions have the right form and the wrong objects (0.23)",
}
