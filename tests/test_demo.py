"""`compress demo --quick` runs the whole pipeline end to end, really shrinks the model, and resumes."""
import pytest

from compress.cli import main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    from compress.demo import run_demo

    work = tmp_path_factory.mktemp("demo")
    result = run_demo(quick=True, out=work / "runs", data=str(work / "data"))
    return work, result


def _row(rows, stage_prefix):
    return next(r for r in rows if r["stage"].startswith(stage_prefix))


def test_demo_pipeline_shrinks_and_evaluates_every_stage(demo):
    work, result = demo
    rows = result["rows"]
    stages = [r["stage"] for r in rows]
    assert stages[0] == "baseline" and {"P1", "P2"} <= set(stages)
    assert any(s.startswith("P2+FT") for s in stages)
    # P1 is fine-tuned twice from the same pruned model: with the teacher and, for comparison, without
    assert {(r["stage"], r["run"]) for r in rows if r["stage"].startswith("P1+")} == {
        ("P1+FT(2)+KD", "mbv2_p1"), ("P1+FT(2)", "mbv2_p1_nokd")}
    assert {(r["stage"], r["run"]) for r in rows if r["stage"].startswith("P2+FT")} >= {
        ("P2+FT(1)+KD", "mbv2_p2"), ("P2+FT(1)", "mbv2_p2_nokd")}
    # the baseline is the shipped model, scored on the demo's root; P1 by another criterion, right after pruning
    assert rows[0]["checkpoint"].endswith("mbv2_reference/trained.pt") and rows[0]["metrics"]["3dpw"]["n"] == 4
    l1 = next(r for r in rows if r["run"] == "mbv2_p1_l1")
    assert l1["stage"] == "P1" and l1["params_total"] < rows[0]["params_total"] and l1["metrics"]["3dpw"]["n"] == 4
    base, p1, p2 = _row(rows, "baseline"), _row(rows, "P1"), _row(rows, "P2")
    assert p2["params_total"] < p1["params_total"] < 0.8 * base["params_total"]  # 20% channels -> >20% params
    assert p2["macs"] < p1["macs"] < 0.8 * base["macs"]
    for row in rows:  # every stage, the pruned ones before fine-tuning included, has the full suite
        assert set(row["metrics"]) == {"3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2", "lsp"}
        assert row["metrics"]["3dpw"]["pa_mpjpe_mm"] > 0
    int8 = _row(rows, "P2+FT")
    int8 = next(r for r in rows if r["stage"] == int8["stage"] + "+INT8")  # the final model in ONNX Runtime
    assert int8["params_total"] == p2["params_total"] and int8["onnx_latency_ms"] > 0
    assert int8["checkpoint"].endswith("quantized.onnx")
    ft = _row(rows, "P1+FT")
    assert ft["delta"]["params_total"]["abs"] == ft["params_total"] - base["params_total"]
    out = work / "runs" / "quick"
    assert (out / "report.md").is_file() and any((out / "plots").glob("*.png"))
    assert "Recovery by fine-tuning" in (out / "report.md").read_text()


def test_demo_rerun_skips_finished_stages(demo):
    work, _ = demo
    trained = work / "runs" / "quick" / "mbv2_p1_nokd" / "finetuned.pt"
    before = trained.stat().st_mtime_ns
    assert main(["demo", "--quick", "--out", str(work / "runs"), "--data", str(work / "data")]) == 0
    assert trained.stat().st_mtime_ns == before


def test_from_scratch_trains_each_stage_of_the_card_from_the_one_before(tmp_path, synth_root):
    import yaml

    from compress.demo import QUICK, _scratch_baseline

    default = {"path": "data/synthetic", "size": "default", "seed": 0}
    card = {"stages": [{"settings": ["model.img_res=64", "train.lr=0.0005"], "data": default, "steps": 8600},
                       {"settings": ["model.img_res=64", "train.lr=0.0001"], "data": default, "steps": 28_000}]}
    labels = []
    final = _scratch_baseline(tmp_path, card, QUICK, synth_root, lambda label: labels.append(label))
    first = tmp_path / "mbv2_baseline_stage1" / "trained.pt"
    assert final == tmp_path / "mbv2_baseline" / "trained.pt" and final.is_file() and first.is_file()
    second = yaml.safe_load((final.parent / "recipe.yaml").read_text())
    assert second["model"]["checkpoint"] == str(first) and second["train"]["lr"] == 0.0001
    assert second["data"]["root"] == str(synth_root)  # --quick: every stage on the demo's root
    assert labels == ["train baseline (from scratch), stage 1 of 2", "train baseline (from scratch), stage 2 of 2"]
