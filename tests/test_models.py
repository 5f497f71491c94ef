"""Model names (gooddrag.models.names) and how the web UI's engine serves them: by name only."""

from __future__ import annotations

import pytest

from gooddrag.errors import GoodDragError
from gooddrag.methods import presets
from gooddrag.models import names as models
from gooddrag.models.loading import DEFAULT_MODEL


def test_builtin_names_resolve_and_pick_their_preset():
    assert models.DEFAULT_HUB_MODEL == DEFAULT_MODEL  # one default, two modules
    shipped = models.resolve("shapes-64")
    assert shipped != "shapes-64" and (models.shipped_model_dir() / "model_index.json").is_file()
    assert shipped == str(models.shipped_model_dir())
    assert models.resolve(DEFAULT_MODEL) == DEFAULT_MODEL
    assert models.resolve("/some/folder") == "/some/folder"  # not a name: unchanged
    assert presets.for_model("dragdiffusion", "shapes-64") == "shapes-dragdiffusion"
    assert presets.for_model("gooddrag", DEFAULT_MODEL) == "gooddrag"
    assert presets.for_model("gooddrag", "/x/y") == "gooddrag"
    assert presets.for_model("gooddrag", shipped) == "shapes-gooddrag"  # a loaded pipeline's source.location


def test_size_warning_when_the_picture_does_not_fit_the_model():
    assert models.size_warning("shapes-64", 64, 64) is None
    text = models.size_warning("shapes-64", 800, 600)
    assert "shapes-64" in text and "64 px" in text and "800x600" in text
    assert "16x16 picture is much smaller" in models.size_warning(DEFAULT_MODEL, 16, 16)  # upscaled, said so
    assert "upscaled" in models.size_warning("shapes-64", 16, 16)
    assert models.size_warning(DEFAULT_MODEL, 512, 384) is None
    assert models.size_warning("/my/model", 16, 16) is None  # unknown model: nothing to say


def test_model_specs_of_the_ui_command_line():
    assert models.parse_model_spec("mine=/models/sd") == ("mine", "/models/sd")
    assert models.parse_model_spec(" sd21 = stabilityai/sd-2-1 ") == ("sd21", "stabilityai/sd-2-1")
    assert models.parse_model_spec("shapes-64") == ("shapes-64", "shapes-64")
    assert models.parse_model_spec("owner/model") == ("owner/model", "owner/model")
    for bad, match in [("=x", "NAME=PATH_OR_ID"), ("a=", "NAME=PATH_OR_ID"), ("", "needs a value"),
                       ("/models/sd", "is a path: give it a name"), ("./m", "is a path")]:
        with pytest.raises(GoodDragError, match=match):
            models.parse_model_spec(bad)


def test_engine_serves_names_only(tmp_path):
    from gooddrag.ui.engine import Engine

    engine = Engine(tmp_path / "r", "cpu", models={"mine": str(tmp_path / "secret-model")})
    assert list(engine.models) == ["shapes-64", "shapes-dit-64", DEFAULT_MODEL, "mine"]
    assert engine.location("shapes-64") == "shapes-64"
    assert engine.location("mine") == str(tmp_path / "secret-model")
    for typed in ("/etc", str(tmp_path / "secret-model"), "", "other/model"):
        with pytest.raises(GoodDragError) as err:
            engine.location(typed)
        text = str(err.value)
        assert text == f"unknown model; choose one of: shapes-64, shapes-dit-64, {DEFAULT_MODEL}, mine"
    with pytest.raises(GoodDragError) as err:  # a served name whose files are missing
        engine.pipeline("mine")
    text = str(err.value)
    assert "mine" in text and str(tmp_path) not in text and "/" not in text.replace(DEFAULT_MODEL, "")
    with pytest.raises(GoodDragError, match="separate VAE"):
        engine.pipeline("shapes-64", vae="/etc/vae")


def test_engine_allow_any_model_takes_paths_and_says_what_failed(tmp_path):
    from gooddrag.ui.engine import Engine

    engine = Engine(tmp_path / "r", "cpu", allow_any_model=True)
    assert engine.location(str(tmp_path)) == str(tmp_path)
    with pytest.raises(GoodDragError) as err:
        engine.pipeline(str(tmp_path / "no-such-model"))
    assert "\n" not in str(err.value) and "no-such-model" in str(err.value)


def test_cli_library_and_bench_take_the_shipped_model_by_name():
    import argparse

    from gooddrag.io.options import (
        add_method_options,
        add_model_options,
        config_from_args,
    )

    p = argparse.ArgumentParser()
    add_model_options(p)
    add_method_options(p)
    assert config_from_args(p.parse_args(["--model", "shapes-64"])).r1 == 4  # shapes-gooddrag
    assert config_from_args(p.parse_args(["--model", "shapes-64", "--method", "dragdiffusion"])).method == \
        "dragdiffusion"
    from gooddrag.methods.config import PRESETS

    shapes = config_from_args(p.parse_args(["--model", "shapes-64"]))
    assert shapes.to_dict() == PRESETS["shapes-gooddrag"].to_dict() | {"seed": shapes.seed}
    sd = config_from_args(p.parse_args([]))
    assert sd.to_dict() == PRESETS["gooddrag"].to_dict() | {"seed": sd.seed}


def test_library_loads_the_shipped_model_by_name():
    from gooddrag import DragPipeline

    pipe = DragPipeline.from_pretrained("shapes-64", device="cpu")
    assert pipe.source.kind == "folder" and pipe.unet.config.sample_size == 16
    assert presets.for_model("gooddrag", pipe.source.location) == "shapes-gooddrag"  # what the pipeline can default to


def test_redact_paths_keeps_names_and_points():
    pytest.importorskip("gradio")
    from gooddrag.ui.handlers import message, redact_paths

    assert redact_paths("no model_index.json in /etc") == "no model_index.json in <server path>"
    assert redact_paths("model '~/m/a.ckpt' and C:\\x\\y") == "model '<server path>' and <server path>"
    kept = "stable-diffusion-v1-5/stable-diffusion-v1-5; points 1,2>3,4; 1/2"
    assert redact_paths(kept) == kept
    assert message(GoodDragError("model '/srv/m' broke")) == "model '<server path>' broke"
    assert message(GoodDragError("model '/srv/m' broke"), paths_allowed=True) == "model '/srv/m' broke"
    assert message(OSError("/srv/secret: denied")) == "internal error (OSError); the details are in the server log"


def test_a_late_echo_of_an_older_mask_is_not_taken_for_the_users_work(monkeypatch):
    pytest.importorskip("gradio")
    import numpy as np

    from gooddrag.ui import handlers

    sets = handlers.EditorSets()
    example = np.zeros((8, 8), bool)
    example[2:5, 2:5] = True
    sets.server_set("s", example)  # an example's mask is sent to the editor...
    sets.server_set("s", None)  # ...then Clear mask, before the editor reported the first
    assert sets.is_late_echo("s", example)  # the first report arrives last: ignored
    assert not sets.is_late_echo("s", None)  # the cleared state is taken
    stroke = example.copy()
    stroke[6, 6] = True
    assert not sets.is_late_echo("s", stroke)  # a new stroke is the user's
    assert not sets.is_late_echo("other", example)  # sessions are apart
    now = handlers.time.monotonic()
    monkeypatch.setattr(handlers.time, "monotonic", lambda: now + handlers.ECHO_WINDOW + 1)
    assert not sets.is_late_echo("s", example)  # long after: the user painted it again


def test_ui_command_refuses_an_unnamed_path_in_one_line(capsys):
    pytest.importorskip("gradio")
    from gooddrag.cli import main

    assert main(["ui", "--model", "/etc", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err == "error: --model '/etc' is a path: give it a name, --model NAME=/etc (clients see the name only)\n"
