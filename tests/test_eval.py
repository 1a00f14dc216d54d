"""LSP rendering and uncrop, result tables, and the evaluation suite end to end on the synthetic root."""
import numpy as np
import pytest
import torch

from compress.eval.render import (
    crop_box, face_labels_from_texture, face_labels_from_vertex_labels, load_face_labels, render_parts,
    resize_nearest, uncrop,
)
from compress.errors import UserError


def test_face_labels_majority_of_vertices():
    vp = np.array([0, 1, 1, 2, 3])
    faces = np.array([[0, 1, 2], [1, 3, 4], [3, 2, 2], [4, 4, 1]])
    np.testing.assert_array_equal(face_labels_from_vertex_labels(vp, faces), [1, 1, 1, 3])


def test_face_labels_from_spin_texture_and_cube():
    cube = np.zeros((100, 92, 17), dtype=np.uint8)
    cube[50, 10, 3] = 4
    cube[20, 30, 5] = 2
    tex = np.zeros((1, 2, 2, 2, 2, 3))
    tex[0, 0] = [0.505, 0.101, 0.035]  # -> cube[50, 10, 3] = 4
    tex[0, 1] = [0.20, 0.30, 0.05]
    tex[0, 1, 0, 0, 0] = [0.505, 0.101, 0.035]  # one odd texel out of 8: the majority wins
    np.testing.assert_array_equal(face_labels_from_texture(tex, cube), [4, 2])


def test_load_face_labels_prefers_vertex_parts_and_reports_missing(tmp_path):
    faces = np.array([[0, 1, 2]])
    with pytest.raises(UserError, match="vertex_parts.npy"):
        load_face_labels(tmp_path, faces)
    # a real SPIN root: per-face texture colours looked up in the colour cube
    cube = np.zeros((100, 92, 17), dtype=np.uint8)
    cube[20, 30, 5] = 6
    np.save(tmp_path / "cube_parts.npy", cube)
    np.save(tmp_path / "vertex_texture.npy", np.full((1, 1, 2, 2, 2, 3), [0.2, 0.3, 0.05]))
    np.testing.assert_array_equal(load_face_labels(tmp_path, faces), [6])
    # per-vertex labels (synthetic roots) take precedence
    (tmp_path / "smpl").mkdir()
    np.save(tmp_path / "smpl" / "vertex_parts.npy", np.array([5, 5, 1]))
    np.testing.assert_array_equal(load_face_labels(tmp_path, faces), [5])


def test_render_parts_weak_perspective_plate_covers_exact_pixels():
    # A flat square at depth 0: perspective with t_z = 2f/(R s) maps X to R/2 (1 + s X) exactly.
    verts = torch.tensor([[[-0.5, -0.25, 0.0], [0.5, -0.25, 0.0], [0.5, 0.25, 0.0], [-0.5, 0.25, 0.0]]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    labels = torch.tensor([3, 6])
    mask, parts = render_parts(verts, faces, labels, torch.tensor([[1.0, 0.0, 0.0]]), img_res=64)
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[24:40, 16:48] = True  # x in [16, 48], y in [24, 40]
    assert torch.equal(mask[0], expected)
    assert set(parts[0][mask[0]].tolist()) == {3, 6} and (parts[0][~mask[0]] == 0).all()
    # tx shifts by R/2 * s * tx pixels: 0.25 -> 8 px to the right
    mask2, _ = render_parts(verts, faces, labels, torch.tensor([[1.0, 0.25, 0.0]]), img_res=64)
    assert torch.equal(mask2[0], torch.roll(expected, 8, dims=1))


def test_crop_box_is_spins_rounding():
    ul, br = crop_box(np.array([100.0, 80.0]), 1.0, 224)  # 200 px box around (100, 80)
    # SPIN's floats, not exact arithmetic: t[1, 2] = 224 * (-80/200 + 0.5) = 224 * 0.09999999999999998
    # = 22.399999999999995, so inv(t) maps crop (0, 0) to y = -19.999999999999996, truncated toward zero -> -19
    np.testing.assert_array_equal(ul, [0, -19])
    np.testing.assert_array_equal(br, [200, 180])
    ul, br = crop_box(np.array([50.7, 60.2]), 0.5, 64)  # 100 px box: corners truncated toward zero as SPIN
    np.testing.assert_array_equal(ul, [0, 10])
    np.testing.assert_array_equal(br, [100, 110])


@pytest.mark.parametrize("spin_rounding", [False, True])
def test_resize_nearest_and_uncrop_paste_into_the_box(spin_rounding):
    img = np.arange(4, dtype=np.uint8).reshape(2, 2)
    np.testing.assert_array_equal(resize_nearest(img, (4, 4)), np.kron(img, np.ones((2, 2), dtype=np.uint8)))
    crop = np.ones((64, 64), dtype=np.uint8)
    crop[:, 32:] = 2
    kw = dict(spin_rounding=spin_rounding)
    out = uncrop(crop, np.array([60.0, 50.0]), 0.4, (100, 120), **kw)  # 80 px box: x 20..100, y 10..90
    assert out.shape == (100, 120)
    assert (out[10:90, 20:60] == 1).all() and (out[10:90, 60:100] == 2).all()
    assert out.sum() == 80 * 40 * 1 + 80 * 40 * 2
    # a box hanging over the border is clipped, not shifted
    out = uncrop(crop, np.array([10.0, 10.0]), 0.4, (50, 50), **kw)  # box -30..50
    assert (out[:50, :10] == 1).all() and (out[:50, 10:50] == 2).all() and out.sum() == 50 * 10 + 50 * 40 * 2


def test_uncrop_inverts_the_datasets_crop():
    from compress.data.crop import crop_matrix, warp

    rng = np.random.default_rng(0)
    labels = np.zeros((90, 110), dtype=np.uint8)
    labels[20:70, 30:80] = np.kron(rng.integers(1, 7, size=(5, 5)), np.ones((10, 10), dtype=np.int64))
    center, scale, res = np.array([55.3, 44.8]), 0.37, 64  # a 74 px box, not aligned to pixels
    crop = warp(np.repeat(labels[..., None], 3, axis=2), crop_matrix(center, scale, res), res)[..., 0]
    back = uncrop(crop, center, scale, labels.shape)
    # bilinear resampling blurs label edges: compare away from them, where the crop is a clean sample
    interior = np.zeros_like(labels, dtype=bool)
    interior[22:68, 32:78] = True
    smooth = np.ones_like(interior)
    for dy in (-2, -1, 0, 1, 2):
        for dx in (-2, -1, 0, 1, 2):
            smooth &= np.roll(labels, (dy, dx), axis=(0, 1)) == labels
    sel = interior & smooth
    assert sel.sum() > 50
    np.testing.assert_array_equal(back[sel], labels[sel])


def test_format_results_table_layout():
    from compress.eval.protocols import format_results_table

    rows = format_results_table({"3dpw": {"n": 3, "mpjpe_mm": 91.234, "pa_mpjpe_mm": 55.0, "pve_mm": 110.0},
                                 "lsp": {"n": 2, "fb_acc": 91.5, "fb_f1": 0.88, "parts_acc": 89.1, "parts_f1": 0.6}})
    assert rows[0][:5] == ["dataset", "n", "MPJPE mm", "PA-MPJPE mm", "PVE mm"]
    assert rows[1][:5] == ["3dpw", "3", "91.23", "55.00", "110.00"] and rows[1][5] == "-"
    assert rows[2][:3] == ["lsp", "2", "-"] and rows[2][-1] == "0.6000"


# ----------------------------------------------------------------------------------------------- the suite


class GroundTruthModel(torch.nn.Module):
    """A "model" that returns each sample's GT SMPL parameters and camera (the synthetic root stores them).

    The loader runs in order without shuffling, so a cursor tells which samples a batch holds. Gendered GT
    bodies (3DPW) are the neutral body with shifted betas in the synthetic body model, so the neutral model
    that evaluation uses for predictions reproduces them exactly.
    """

    def __init__(self, root, key):
        super().__init__()
        from compress.constants import EVAL_DATASETS
        from compress.data.body import GENDER_BETAS

        d = np.load(root / "dataset_extras" / f"{EVAL_DATASETS[key]}.npz")
        betas = d["shape"].astype(np.float32)
        if "gender" in d:
            shift = [GENDER_BETAS["male" if g == "m" else "female"] for g in d["gender"]]
            betas = betas + np.stack(shift).astype(np.float32)
        self.pose = torch.tensor(d["pose"], dtype=torch.float32)
        self.betas = torch.tensor(betas)
        self.cam = torch.tensor(d["cam"], dtype=torch.float32)
        self.cursor = 0
        self.weight = torch.nn.Parameter(torch.zeros(()))  # so evaluate() can find a device

    def forward(self, img):
        from compress.geometry import batch_rodrigues

        i, b = self.cursor, img.shape[0]
        self.cursor += b
        rotmat = batch_rodrigues(self.pose[i:i + b].reshape(-1, 3)).reshape(b, 24, 3, 3)
        return {"rotmat": rotmat, "betas": self.betas[i:i + b], "cam": self.cam[i:i + b]}


def _evaluate_ground_truth(root, keys, **kw):
    from compress.eval.protocols import evaluate

    results = {}
    for key in keys:
        results.update(evaluate(GroundTruthModel(root, key), root, datasets=[key], img_res=64, **kw))
    return results


def test_ground_truth_model_scores_near_perfect(synth_root, tmp_path):
    import json

    from compress.constants import EVAL_DATASETS

    calls = []
    res = _evaluate_ground_truth(synth_root, list(EVAL_DATASETS), batch_size=3, save_dir=tmp_path / "out",
                                 progress=lambda k, d, t: calls.append((k, d, t)))
    assert list(res) == list(EVAL_DATASETS)
    for key in ("3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2"):
        r = res[key]
        assert r["n"] >= 2
        assert r["mpjpe_mm"] < 0.01 and r["pa_mpjpe_mm"] < 0.01, (key, r)
        assert r["pve_mm"] < 0.01, (key, r)  # the synthetic eval files all carry GT SMPL
    lsp = res["lsp"]
    assert lsp["n"] == 4
    assert lsp["fb_acc"] > 98.5 and lsp["fb_f1"] > 0.95, lsp
    assert lsp["parts_acc"] > 98.0 and lsp["parts_f1"] > 0.88, lsp
    # progress reaches the end of every dataset
    last = {k: (d, t) for k, d, t in calls}
    assert all(d == t == res[k]["n"] for k, (d, t) in last.items()) and set(last) == set(EVAL_DATASETS)
    # per-sample files and the summary
    per = np.load(tmp_path / "out" / "h36m-p1.npz")
    assert per["mpjpe_mm"].shape == (8,) and per["pose"].shape == (8, 72) and per["pred_joints"].shape == (8, 17, 3)
    np.testing.assert_allclose(per["mpjpe_mm"].mean(), res["h36m-p1"]["mpjpe_mm"], rtol=1e-5)
    assert np.load(tmp_path / "out" / "lsp.npz")["fb_acc"].shape == (4,)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["lsp"]["parts_f1"] == pytest.approx(lsp["parts_f1"])


def test_untrained_model_is_clearly_worse_and_batching_does_not_matter(synth_root):
    from compress.eval.protocols import evaluate
    from compress.models import create_model

    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=64)
    model.train()
    res = evaluate(model, synth_root, img_res=64, batch_size=4)
    assert model.training  # the caller's mode is restored
    for key in ("3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2"):
        assert res[key]["mpjpe_mm"] > 50 and res[key]["pa_mpjpe_mm"] > 30 and res[key]["pve_mm"] > 50, res[key]
    assert res["lsp"]["fb_f1"] < 0.85 and res["lsp"]["parts_f1"] < 0.6, res["lsp"]
    again = evaluate(model, synth_root, datasets=["h36m-p1", "lsp"], img_res=64, batch_size=3)
    for key in again:
        for metric, value in again[key].items():
            assert value == pytest.approx(res[key][metric], rel=1e-4, abs=1e-4), (key, metric)


def test_missing_dataset_files_are_skipped_unless_strict(tmp_path, caplog):
    from compress.eval.protocols import evaluate

    model = torch.nn.Linear(1, 1)
    # none present is an error (tests/test_eval_errors.py); some present: the others are skipped with a warning
    with pytest.raises(UserError, match="3dpw_test.npz.*lsp_dataset_test.npz"):
        evaluate(model, tmp_path, datasets=["3dpw", "lsp"], img_res=64)
    with pytest.raises(UserError, match="3dpw_test.npz"):
        evaluate(model, tmp_path, datasets=["3dpw"], img_res=64, strict=True)
    with pytest.raises(UserError, match="unknown evaluation dataset"):
        evaluate(model, tmp_path, datasets=["h36m"], img_res=64)


def test_evaluate_checkpoint_as_the_cli_calls_it(synth_root, tmp_path):
    from compress.checkpoint import save_checkpoint
    from compress.eval.protocols import evaluate, evaluate_checkpoint
    from compress.models import create_model

    torch.manual_seed(1)
    model = create_model("hmr_tiny", img_res=64).eval()
    path = save_checkpoint(model, tmp_path / "tiny.pt")
    res = evaluate_checkpoint(path, root=synth_root, datasets=["h36m-p2", "lsp"], strict=True, subset=2,
                              batch_size=2, img_res=None, name=None, save_dir=tmp_path / "out", progress=None)
    assert [res[k]["n"] for k in res] == [2, 2]
    direct = evaluate(model, synth_root, datasets=["h36m-p2"], img_res=64, subset=2)
    assert res["h36m-p2"]["mpjpe_mm"] == pytest.approx(direct["h36m-p2"]["mpjpe_mm"], rel=1e-5)


def test_relative_data_root_finds_the_lsp_labels(synth_root, monkeypatch):
    from compress.eval.protocols import evaluate

    monkeypatch.chdir(synth_root.parent)
    model = GroundTruthModel(synth_root, "lsp")
    res = evaluate(model, synth_root.name, datasets=["lsp"], img_res=64, subset=1)
    assert res["lsp"]["n"] == 1 and res["lsp"]["fb_acc"] > 98
