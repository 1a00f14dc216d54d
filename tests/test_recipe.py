"""Recipes: every shipped recipe loads; strict conversion reports all errors at once; overrides; round trip."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compress.errors import UserError
from compress.recipe import (
    PruneSpec, Recipe, TrainSpec, apply_overrides, load_recipe, override_recipe, overrides_between,
    recipe_from_dict,
    recipe_reference_markdown, recipe_to_dict, save_recipe,
)

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_env_root(monkeypatch):
    monkeypatch.delenv("COMPRESS_DATA_ROOT", raising=False)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_every_shipped_recipe_loads(path):
    recipe = load_recipe(path)
    assert recipe.name
    assert recipe_from_dict(recipe_to_dict(recipe)) == recipe


def _write(tmp_path, data, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults_and_name_from_stem(tmp_path):
    recipe = load_recipe(_write(tmp_path, {"prune": {"ratio": 0.3, "global": True}}, "my_run.yaml"))
    assert recipe.name == "my_run"
    assert recipe.model.name == "hmr_mobilenet_v2" and recipe.model.img_res == 224
    assert recipe.data.mix == {"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1}
    assert recipe.prune == PruneSpec(ratio=0.3, global_=True)
    assert recipe.train is None and recipe.finetune is None
    assert recipe.eval.datasets == ["3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2", "lsp"]


def test_recipes_are_frozen_and_defaults_not_shared():
    a, b = Recipe(), Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.name = "x"
    a.data.mix["h36m"] = 1.0
    assert b.data.mix["h36m"] == 0.3


def test_all_errors_reported_at_once_with_paths_and_hints():
    bad = {
        "modle": {},
        "model": {"img_rez": 64, "img_res": "big"},
        "prune": {"importance": "l3", "ratio": 1.5, "round_to": 3, "globl": True},
        "train": {"epochs": 2.5, "amp": 1, "distill": {"teacher": 3}},
        "data": {"mix": {"h36n": 0.3}, "image_roots": {"cocoo": "/x"}},
    }
    with pytest.raises(UserError) as info:
        recipe_from_dict(bad)
    lines = str(info.value).splitlines()
    assert lines[0] == "recipe: 12 problems:"
    text = str(info.value)
    for expected in [
        "modle: unknown key (did you mean 'model'?)",
        "model.img_rez: unknown key (did you mean 'img_res'?)",
        "model.img_res: expected int, got 'big' (str)",
        "prune.importance: 'l3' is not one of l1, l2, bn_scale, taylor, lamp, fpgm, random",
        "prune.ratio: must be < 1, got 1.5",
        "prune.round_to: 3 is not one of 1, 2, 4, 8, 16",
        "prune.globl: unknown key (did you mean 'global'?)",
        "train.epochs: expected int, got 2.5 (float)",
        "train.amp: expected bool, got 1 (int)",
        "train.distill.teacher: expected str, got 3 (int)",
        "data.mix: unknown name 'h36n' (did you mean 'h36m'?)",
        "data.image_roots: unknown name 'cocoo' (did you mean 'coco'?)",
    ]:
        assert expected in text


def test_single_error_is_one_line(tmp_path):
    path = _write(tmp_path, {"eval": {"batch_size": 0}})
    with pytest.raises(UserError) as info:
        load_recipe(path)
    assert str(info.value) == f"{path}: eval.batch_size: must be >= 1, got 0"


def test_cross_field_rules():
    with pytest.raises(UserError, match="prune.ratio: give either `ratio` or `target`"):
        recipe_from_dict({"prune": {"ratio": 0.2, "target": {"params_ratio": 0.5}}})
    with pytest.raises(UserError, match="prune.target: give exactly one of"):
        recipe_from_dict({"prune": {"target": {"params": 10, "macs": 10}}})
    recipe = recipe_from_dict({"prune": {"target": {"macs_ratio": 0.5}}})
    assert recipe.prune.target.macs_ratio == 0.5


def test_overrides_parse_yaml_scalars_with_types(tmp_path):
    path = _write(tmp_path, {"finetune": {"epochs": 3}})
    recipe = load_recipe(path, overrides=[
        "finetune.lr=1e-4", "finetune.epochs=8", "finetune.amp=false", "prune.ratio=0.25",
        "model.overrides.encoder_head=logits", "eval.subset=null", "data.train_datasets=[h36m, coco]",
        "prune.global=true",
    ])
    assert recipe.finetune == TrainSpec(lr=1e-4, epochs=8, amp=False)
    assert isinstance(recipe.finetune.lr, float)
    assert recipe.prune.ratio == 0.25 and recipe.prune.global_ is True
    assert recipe.model.overrides == {"encoder_head": "logits"}
    assert recipe.data.train_datasets == ["h36m", "coco"]
    with pytest.raises(UserError, match="finetune.epochs: expected int, got 'many'"):
        load_recipe(path, overrides=["finetune.epochs=many"])
    with pytest.raises(UserError, match="finetune.lr: must be a finite number, got inf"):
        load_recipe(path, overrides=["finetune.lr=.inf"])
    with pytest.raises(UserError, match="expects key.path=value"):
        load_recipe(path, overrides=["finetune.epochs"])
    with pytest.raises(UserError, match="finetune.epochs is a value, not a section"):
        load_recipe(path, overrides=["finetune.epochs.x=1"])


def test_data_root_precedence(tmp_path, monkeypatch):
    path = _write(tmp_path, {"data": {"root": "from/file"}})
    assert load_recipe(path).data.root == "from/file"
    monkeypatch.setenv("COMPRESS_DATA_ROOT", "from/env")
    assert load_recipe(path).data.root == "from/env"
    assert load_recipe(path, overrides=["data.root=from/cli"]).data.root == "from/cli"
    assert load_recipe(path, overrides=["data.root=from/set"], root="from/data").data.root == "from/data"
    assert load_recipe(path, env=False).data.root == "from/file"


def test_run_recipe_keeps_its_data_root(tmp_path, monkeypatch):
    """A run's stored recipe is re-read without the environment: a later step keeps the root the run was made with."""
    from compress.runs import load_run_recipe

    save_recipe(recipe_from_dict({"name": "r", "data": {"root": "made/with"}}), tmp_path / "run" / "recipe.yaml")
    monkeypatch.setenv("COMPRESS_DATA_ROOT", "from/env")
    assert load_run_recipe(tmp_path / "run").data.root == "made/with"
    assert load_run_recipe(tmp_path / "run", ["data.root=other"]).data.root == "other"
    with pytest.raises(UserError, match="has no recipe.yaml"):
        load_run_recipe(tmp_path)


def test_data_root_rule(monkeypatch):
    from compress.recipe import DEFAULT_DATA_ROOT, data_root

    monkeypatch.delenv("COMPRESS_DATA_ROOT", raising=False)
    assert data_root() == DEFAULT_DATA_ROOT and data_root(None, "r") == "r"
    monkeypatch.setenv("COMPRESS_DATA_ROOT", "e")
    assert data_root(None, "r") == "e" and data_root("g", "r") == "g" and data_root(None, "r", env=False) == "r"


def test_save_round_trip_and_override_recipe(tmp_path):
    recipe = recipe_from_dict({"name": "x", "prune": {"from": "runs/a", "global": True, "ignore": ["fc2"]},
                               "finetune": {"distill": {"teacher": "t.pt"}}})
    out = save_recipe(recipe, tmp_path / "run" / "recipe.yaml")
    text = out.read_text()
    assert "global: true" in text and "from: runs/a" in text
    assert load_recipe(out) == recipe
    assert not list(out.parent.glob("*.tmp"))
    assert override_recipe(recipe, ["prune.ratio=0.5"]).prune.ratio == 0.5


def test_overrides_between_recipes_rebuild_the_second():
    base = load_recipe(RECIPES[0].parent / "mbv2_baseline.yaml", env=False)
    given = ["train.lr=3e-4", "train.lr_schedule=constant", "data.mix.h36m=0.5", "model.overrides.width=0.5",
             "train.amp=false", "data.root=elsewhere", "train.distill=null", "finetune.epochs=3"]
    ran = override_recipe(base, given)
    found = overrides_between(base, ran, skip=["data.root"])
    assert "train.lr=0.0003" in found and "data.mix.h36m=0.5" in found and not any("root" in f for f in found)
    assert override_recipe(base, found) == override_recipe(ran, [f"data.root={base.data.root}"])
    assert overrides_between(base, base) == []


def test_apply_overrides_does_not_mutate():
    data = {"train": {"lr": 1.0}}
    assert apply_overrides(data, ["train.lr=2.0", "prune.ratio=0.1"]) == {"train": {"lr": 2.0}, "prune": {"ratio": 0.1}}
    assert data == {"train": {"lr": 1.0}}


def test_bad_files(tmp_path):
    with pytest.raises(UserError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_recipe(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(UserError, match="a recipe is a mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_reference_lists_every_field_with_help():
    text = recipe_reference_markdown()
    from compress import recipe as mod

    sections = [v for v in vars(mod).values() if isinstance(v, type) and dataclasses.is_dataclass(v)]
    for cls in sections:
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    for key in ["`model.img_res`", "`prune.global`", "`prune.from`", "`train.distill.rotmat`",
                "`prune.target.latency_ms`", "`data.mix`", "`eval.subset`"]:
        assert key in text
    assert "| `prune.ratio` | float | `0.2` |" in text


def test_no_torch_import():
    code = "import sys, compress.recipe; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def test_set_keeps_dotted_module_names_as_one_key_in_mapping_fields():
    data = apply_overrides({}, ["prune.ratio_by_module.encoder.features.3=0.5", "model.overrides.encoder_head=logits",
                                "data.image_roots.lsp-orig=/x/y.z", "prune.ratio=0.3", "prune.target.params=5"])
    assert data["prune"]["ratio_by_module"] == {"encoder.features.3": 0.5}
    assert data["model"]["overrides"] == {"encoder_head": "logits"}
    assert data["data"]["image_roots"] == {"lsp-orig": "/x/y.z"}
    assert data["prune"]["ratio"] == 0.3 and data["prune"]["target"] == {"params": 5}
    recipe = recipe_from_dict(apply_overrides({"prune": {"ratio_by_module": {"fc1": 0.2}}},
                                              ["prune.ratio_by_module.encoder.features.3=0.5"]))
    assert recipe.prune.ratio_by_module == {"fc1": 0.2, "encoder.features.3": 0.5}


def test_prune_target_exactly_one_and_saved_target_recipe_reloads(tmp_path):
    with pytest.raises(UserError, match="exactly one of"):
        recipe_from_dict({"prune": {"target": {"params": 10, "latency_ratio": 0.5}}})
    with pytest.raises(UserError, match="either `ratio` or `target`"):
        recipe_from_dict({"prune": {"ratio": 0.3, "target": {"params": 10}}})
    with pytest.raises(UserError, match="device"):
        recipe_from_dict({"prune": {"target": {"latency_ms": 5, "device": "tpu"}}})
    recipe = recipe_from_dict({"prune": {"target": {"latency_ratio": 0.5, "threads": 1}}})
    assert "ratio" not in recipe_to_dict(recipe)["prune"]  # one of ratio / target survives a save
    assert load_recipe(save_recipe(recipe, tmp_path / "r.yaml")).prune.target == recipe.prune.target
