"""The one table of which preset fits which model (gooddrag.methods.presets), and the web UI's method list
built from it (issue P2b): every entry runs the selected model's own preset."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from gooddrag.errors import GoodDragError
from gooddrag.methods import presets
from gooddrag.methods.config import METHODS, PRESETS
from gooddrag.models.backbone import SD, SDXL
from gooddrag.models.names import DEFAULT_HUB_MODEL, SHAPES_MODEL, shipped_model_dir


def test_every_preset_is_in_the_table_once_and_made_for_its_method():
    assert sorted(presets.PRESET_NAMES.values()) == sorted(PRESETS)
    for (method, family), name in presets.PRESET_NAMES.items():
        assert PRESETS[name].method == method and family in presets.FAMILIES


@pytest.mark.parametrize("model,kind,light,family", [
    (SHAPES_MODEL, SD, False, "shapes"),
    (None, SD, False, "sd"),
    (DEFAULT_HUB_MODEL, SD, False, "sd"),
    ("/any/sdxl-looking-name-xl", SD, False, "sd"),  # never from the name: the kind decides
    ("/models/mine", SDXL, False, "sdxl"),
    ("/models/mine", SDXL, True, "sdxl-768"),
])
def test_the_family_comes_from_the_known_name_or_the_backbone_kind(model, kind, light, family):
    assert presets.family_for(model, kind, light) == family


def test_for_model_by_hand():
    assert presets.for_model("gooddrag-plus", SHAPES_MODEL) == "shapes-gooddrag-plus"
    assert presets.for_model("gooddrag-plus", str(shipped_model_dir())) == "shapes-gooddrag-plus"
    assert presets.for_model("dragdiffusion", DEFAULT_HUB_MODEL) == "dragdiffusion"
    assert presets.for_model("gooddrag", "/x", SDXL, light=True) == "gooddrag-sdxl-768"
    with pytest.raises(GoodDragError, match="no preset of method 'magic'"):
        presets.for_model("magic", SHAPES_MODEL)


def test_labels_never_show_a_preset_name_and_a_misfit_says_what_it_costs():
    for name in PRESETS:
        words = presets.label(name)
        assert name not in words.split(", ")[0] and words.startswith(presets.METHOD_LABELS[PRESETS[name].method])
    assert presets.misfit("shapes-gooddrag-plus", "shapes") is None
    said = presets.misfit("gooddrag-plus", "shapes")
    assert "512 px" in said and "70 LoRA steps x 4" in said and "38 DDIM steps" in said
    assert "shapes-64 settings" in said


@pytest.mark.parametrize("model", [SHAPES_MODEL, DEFAULT_HUB_MODEL])
def test_the_page_offers_methods_each_with_the_models_own_preset(model):
    from gooddrag.ui import state

    choices = state.method_choices(model)
    assert [label for label, _ in choices] == [presets.METHOD_LABELS[m] for m in state.PAGE_METHODS]
    family = presets.family_for(model)
    assert all(presets.family_of_preset(p) == family for _, p in choices)
    # every method the page lists runs its own preset
    assert {PRESETS[p].method for _, p in choices} == set(state.PAGE_METHODS) <= set(METHODS)
    assert all(p not in label for label, p in choices)  # labels, never raw preset names
    # switching model keeps the method and takes the new model's preset
    other = DEFAULT_HUB_MODEL if model == SHAPES_MODEL else SHAPES_MODEL
    for _, p in choices:
        moved = state.preset_for_model(other, p)
        assert PRESETS[moved].method == PRESETS[p].method
        assert presets.family_of_preset(moved) == presets.family_for(other)


def test_the_first_example_with_gooddrag_plus_runs_its_shapes_preset_in_under_30_s(tmp_path):
    """The issue's run: the web UI's first example, "GoodDrag+" picked from the method list with
    shapes-64 selected, the page's default settings (LoRA trained): the shapes-64 preset, fast."""
    from gooddrag import ui
    from gooddrag.ui import state
    from gooddrag.ui.examples import shipped_examples

    example = shipped_examples()[0]
    preset = dict((label, p) for label, p in state.method_choices(SHAPES_MODEL))[presets.METHOD_LABELS["gooddrag-plus"]]
    engine = ui.Engine(tmp_path / "results", "cpu", lora_cache_dir=tmp_path / "lora")
    started = time.perf_counter()
    out = engine.edit(example.image, example.points, example.mask, preset=preset, model=SHAPES_MODEL)
    seconds = time.perf_counter() - started
    import json

    record = json.loads((out.folder / "run.json").read_text())
    assert record["config"] == PRESETS["shapes-gooddrag-plus"].to_dict() | {"seed": record["config"]["seed"]}
    assert seconds < 30, seconds
    assert np.asarray(Image.open(out.folder / "edited.png")).shape[:2] == example.image.size[::-1]
