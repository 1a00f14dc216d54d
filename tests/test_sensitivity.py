"""`compress sensitivity`: one unit pruned at a time on hmr_tiny (64 px) over the small synthetic root."""
from __future__ import annotations

import json

import pytest
import torch

from compress.errors import UserError
from compress.models import create_model
from compress.sensitivity import (
    _check_ratios, format_sensitivity_table, prunable_units, run_sensitivity, suggest_ratios, weighted_mean_ratio,
)

torch.set_num_threads(1)
RES = 64
TINY_UNITS = ["encoder.stem", "encoder.res", "encoder.dw", "encoder.pw", "encoder.down", "fc1", "fc2"]


@pytest.fixture(scope="module")
def root(synth_root):
    return synth_root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from compress.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(create_model("hmr_tiny", img_res=RES), tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def result(root, ckpt, tmp_path_factory):
    # ratio 0 is the baseline: dropped, not run
    return run_sensitivity(ckpt, root=root, ratios=(0.0, 0.4, 0.2), subset=4, budget_ratio=0.3,
                           out_dir=tmp_path_factory.mktemp("sens"))


def _row(result, unit, ratio):
    return next(r for r in result["rows"] if r["unit"] == unit and r["ratio"] == ratio)


# ----------------------------------------------------------------------------------------------- units


def test_units_are_encoder_stages_and_hidden_layers():
    assert prunable_units(create_model("hmr_tiny", img_res=RES)) == TINY_UNITS
    spin = prunable_units(create_model("hmr_resnet50", img_res=RES))
    assert spin == ["conv1", "layer1", "layer2", "layer3", "layer4", "fc1", "fc2"]
    mbv2 = prunable_units(create_model("hmr_mobilenet_v2", img_res=RES))
    assert mbv2 == [f"encoder.features.{i}" for i in range(19)] + ["fc1", "fc2"]
    seed = prunable_units(create_model("hmr_seed_mobilenet_v2", img_res=RES))
    assert not set(seed) & {"classifier1", "classifier2", "decpose2", "poseconv"}  # heads are never units
    assert seed[-2:] == ["conv2", "conv3"]


# ----------------------------------------------------------------------------------------------- run


def test_one_row_per_unit_and_ratio(result):
    assert result["ratios"] == [0.2, 0.4]
    table = format_sensitivity_table(result)
    assert len(table) == 1 + len(TINY_UNITS) * 2
    assert {(r[1], r[2]) for r in table[1:]} == {(u, r) for u in TINY_UNITS for r in ("0.2", "0.4")}
    assert sorted(u["unit"] for u in result["units"]) == sorted(TINY_UNITS)
    # rows follow the ranking: rank 1 first, coupled units last
    ranks = [u["rank"] for u in result["units"]]
    measured = [r for r in ranks if r is not None]
    assert measured == list(range(1, len(measured) + 1)) and ranks[:len(measured)] == measured
    ranked = [u for u in result["units"] if u["rank"] is not None]
    losses = [max(u["mm_per_pct_params"], 0.0) for u in ranked]  # negative slopes are noise: zero loss
    assert losses == sorted(losses)
    for a, b in zip(ranked, ranked[1:]):
        if max(a["mm_per_pct_params"], 0.0) == max(b["mm_per_pct_params"], 0.0):
            assert a["params_removed_pct_max"] >= b["params_removed_pct_max"]


def test_larger_ratio_removes_more_and_golden_fc1(result):
    for unit in result["units"]:
        if unit["rank"] is None:
            continue
        small, large = _row(result, unit["unit"], 0.2), _row(result, unit["unit"], 0.4)
        assert 0 < small["params_removed"] < large["params_removed"], unit["unit"]
        assert 0 < small["macs_removed"] < large["macs_removed"], unit["unit"]
    # fc1 alone at 0.4: int(64 * 0.6) = 38 of 64 hidden units kept; each removed unit takes an fc1 row
    # (32 features + 157 estimate + bias) and an fc2 input column (64)
    fc1 = _row(result, "fc1", 0.4)
    assert (fc1["channels_removed"], fc1["channels"]) == (26, 64)
    assert fc1["params_removed"] == 26 * (32 + 157 + 1) + 26 * 64
    assert fc1["params_removed_pct"] == pytest.approx(100 * 6604 / result["baseline"]["params_total"])


def test_coupled_units_remove_nothing_and_are_not_ranked(result):
    # the stem feeds the residual add and the depthwise conv follows it: no channel belongs to either alone
    coupled = {u["unit"] for u in result["units"] if u["rank"] is None}
    assert coupled == {"encoder.stem", "encoder.dw"}
    for unit in coupled:
        row = _row(result, unit, 0.4)
        assert row["params_removed"] == 0 and row["delta_pa_mpjpe_mm"] == pytest.approx(0.0, abs=1e-6)


def test_metrics_are_means_over_the_datasets(result):
    base = result["baseline"]
    assert set(base["metrics"]) == {"3dpw", "h36m-p2"}
    mean = sum(m["pa_mpjpe_mm"] for m in base["metrics"].values()) / 2
    assert base["pa_mpjpe_mm"] == pytest.approx(mean)
    row = _row(result, "fc1", 0.2)
    assert row["delta_pa_mpjpe_mm"] == pytest.approx(row["pa_mpjpe_mm"] - base["pa_mpjpe_mm"])
    assert all(m["n"] <= 4 for m in row["metrics"].values())


def test_json_and_png_are_written(result):
    from PIL import Image

    saved = json.loads(open(result["json"]).read())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    assert saved["suggested"]["ratio_by_module"] == result["suggested"]["ratio_by_module"]
    with Image.open(result["plot"]) as img:
        assert img.format == "PNG" and img.size[0] > 800 and img.size[1] > 300


# ----------------------------------------------------------------------------------------------- suggestion


def test_suggested_ratios_average_to_the_budget(result):
    ratios = result["suggested"]["ratio_by_module"]
    assert set(ratios) == {u["unit"] for u in result["units"] if u["rank"] is not None}
    assert weighted_mean_ratio(result, ratios) == pytest.approx(0.3, abs=1e-3)
    for budget in (0.1, 0.25, 0.4):
        assert weighted_mean_ratio(result, suggest_ratios(result, budget_ratio=budget)) == pytest.approx(budget,
                                                                                                        abs=1e-3)


def _fake(slopes: dict[str, float], channels: dict[str, int]) -> dict:
    units = [{"unit": u, "rank": i + 1, "mm_per_pct_params": s, "channels": channels[u]}
             for i, (u, s) in enumerate(sorted(slopes.items(), key=lambda kv: kv[1]))]
    return {"ratios": [0.1, 0.2, 0.4], "rank_by": "params", "units": units}


def test_suggestion_prunes_the_least_sensitive_most():
    results = _fake({"a": 0.05, "b": 0.5, "c": 2.0, "d": -0.3}, {"a": 32, "b": 64, "c": 16, "d": 128})
    ratios = suggest_ratios(results, budget_ratio=0.2)
    assert ratios["d"] >= ratios["a"] > ratios["b"] > ratios["c"] > 0
    assert max(ratios.values()) <= 0.4  # never beyond the largest measured ratio
    assert weighted_mean_ratio(results, ratios) == pytest.approx(0.2, abs=1e-3)
    # every slope below the noise level: a uniform split
    flat = _fake({"a": 0.001, "b": -0.002, "c": 0.0}, {"a": 8, "b": 16, "c": 32})
    assert set(suggest_ratios(flat, budget_ratio=0.2).values()) == {0.2}


def test_a_unit_whose_pruned_error_is_nan_ranks_last():
    from compress.sensitivity import _rank_units

    def row(unit, delta):
        return {"unit": unit, "ratio": 0.5, "channels": 8, "params_removed": 100, "params_removed_pct": 10.0,
                "macs_removed_pct": 10.0, "delta_pa_mpjpe_mm": delta}

    ranked = _rank_units(["a", "b", "c"], [row("a", float("nan")), row("b", 30.0), row("c", 5.0)], rank_by="params")
    assert [(u["unit"], u["rank"]) for u in ranked] == [("c", 1), ("b", 2), ("a", 3)]


def test_bad_ratios_and_budgets_are_refused():
    assert _check_ratios([0.0, 0.2, 0.2, 0.1]) == [0.1, 0.2]
    for bad in ([0.0], [1.0], [-0.1], [0.2, 1.5]):
        with pytest.raises(UserError):
            _check_ratios(bad)
    results = _fake({"a": 0.1}, {"a": 8})
    for budget in (0.0, 0.5, 1.0):
        with pytest.raises(UserError):
            suggest_ratios(results, budget_ratio=budget)


def test_bad_options_fail_before_any_work(root, ckpt, tmp_path):
    for kwargs in ({"datasets": ["lsp"]}, {"importance": "taylor"}, {"units": ["encoder.nope"]},
                   {"budget_ratio": 0.5}, {"ratios": [0.0]}):
        with pytest.raises(UserError):
            run_sensitivity(ckpt, root=root, subset=2, out_dir=tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_writes_png_and_json(root, ckpt, tmp_path, capsys):
    from compress.cli import main

    out = tmp_path / "out"
    argv = ["sensitivity", str(ckpt), "--data", str(root), "--ratios", "0.4,0.1", "--subset", "4",
            "--units", "fc1,encoder.res", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [(r["unit"], r["ratio"]) for r in printed["rows"]] == [(u, r) for u in
                                                                  [e["unit"] for e in printed["units"]]
                                                                  for r in (0.1, 0.4)]
    assert (out / "sensitivity.png").stat().st_size > 10_000
    assert json.loads((out / "sensitivity.json").read_text())["suggested"]["budget_ratio"] == 0.2  # the default
    # the table and the YAML snippet
    assert main(argv[:-1]) == 0
    text = capsys.readouterr().out
    assert "encoder.res" in text and "ratio_by_module:" in text and "fc1:" in text


def test_cli_bad_checkpoint_is_one_line_exit_2(root, tmp_path, capsys):
    from compress.cli import main

    assert main(["sensitivity", str(tmp_path / "nope.pt"), "--data", str(root)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("compress: error:") and "nope.pt" in err[0]
    assert main(["sensitivity", str(tmp_path / "nope.pt"), "--ratios", "0.1,x"]) == 2
    assert main(["sensitivity", str(tmp_path / "nope.pt"), "--ratios", "0"]) == 2  # nothing to test


def test_suggested_snippet_is_a_recipe_prune_section_that_prunes(result):
    import yaml

    from compress.prune import prune_model
    from compress.recipe import recipe_from_dict
    from compress.sensitivity import recipe_snippet

    ratios = result["suggested"]["ratio_by_module"]
    recipe = recipe_from_dict(yaml.safe_load(recipe_snippet(ratios, budget_ratio=0.3)))
    assert recipe.prune.ratio_by_module == ratios and recipe.prune.ratio == 0.3
    model = create_model("hmr_tiny", img_res=RES)
    _, summary = prune_model(model, recipe.prune, torch.randn(1, 3, RES, RES))
    assert summary.after.params_total < summary.before.params_total


def test_a_ratio_that_empties_a_layer_is_refused_and_the_sweep_goes_on(root, ckpt, tmp_path):
    # 0.95 of encoder.res's 16 channels keeps int(0.8) = 0: refused by the pruner; fc1 keeps ceil(64 * 0.05) = 4
    res = run_sensitivity(ckpt, root=root, ratios=[0.95], subset=2, datasets=["h36m-p2"],
                          units=["encoder.res", "fc1"], out_dir=tmp_path)
    refused = _row(res, "encoder.res", 0.95)
    assert "encoder.res" in refused["error"] and "params_removed" not in refused
    assert _row(res, "fc1", 0.95)["channels_removed"] == 60  # the tested ratio, not the 0.8 per-layer default cap
    units = {u["unit"]: u for u in res["units"]}
    assert units["encoder.res"]["rank"] is None and units["encoder.res"]["refused"] == [0.95]
    assert units["fc1"]["rank"] == 1
    assert [r[3] for r in format_sensitivity_table(res)[1:]] == [f"{_row(res, 'fc1', 0.95)['params_removed_pct']:.1f}%",
                                                                 "refused"]
    assert (tmp_path / "sensitivity.png").is_file()
