import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress import constants as C
from compress.data import body as body_mod
from compress.data.synthetic import generate_root, sample_body_pose
from compress.smpl import SMPL, load_smpl_file

# ----------------------------------------------------------------------------------------------- body model


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    torch.set_num_threads(1)
    return generate_root(tmp_path_factory.mktemp("synth") / "root", size="small", seed=0)


@pytest.fixture(scope="module")
def smpl(root):
    return SMPL(root)


def _rest(b):
    return torch.eye(3).expand(b, 24, 3, 3).clone()


def test_body_layout():
    body = body_mod.build_body("neutral")
    d = body.smpl
    assert d["v_template"].shape == (6890, 3) and d["shapedirs"].shape == (6890, 3, 10)
    assert d["posedirs"].shape == (6890, 3, 207) and d["weights"].shape == (6890, 24)
    assert d["J_regressor"].shape == (24, 6890) and d["J_regressor"].format == "csc"
    np.testing.assert_array_equal(d["kintree_table"][0, 1:], C.SMPL_PARENTS[1:])
    np.testing.assert_allclose(d["weights"].sum(1), 1.0, atol=1e-9)
    for reg in (d["J_regressor"].toarray(), body.j_regressor_extra, body.j_regressor_h36m):
        np.testing.assert_allclose(reg.sum(1), 1.0, atol=1e-9)
    # closed surface: every edge is shared by exactly two faces, each used once in each direction
    f = d["f"].astype(np.int64)
    edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    keys = edges[:, 0] * 6890 + edges[:, 1]
    rev = edges[:, 1] * 6890 + edges[:, 0]
    assert len(np.unique(keys)) == len(keys) and np.isin(rev, keys).all()
    assert len(np.unique(f)) == 6890  # every vertex is used
    height = d["v_template"][:, 1].max() - d["v_template"][:, 1].min()
    assert 1.6 < height < 1.85
    assert set(np.unique(body.part_labels)) == set(body_mod.LSP_PART_NAMES)
    # pose correctives: small (under 1.5 cm for a 90 degree bend, whose diag(R - I) has two -1 entries) and
    # only on the diagonal features
    assert 0.002 < 2 * np.abs(d["posedirs"]).max() < 0.015
    off_diag = [k for k in range(207) if k % 9 not in (0, 4, 8)]
    assert not d["posedirs"][:, :, off_diag].any()


def test_genders_differ_and_are_deterministic():
    n, m, f = (body_mod.build_body(g).smpl["v_template"] for g in ("neutral", "male", "female"))
    assert np.abs(m - n).max() > 0.01 and np.abs(f - n).max() > 0.01
    # male/female templates are the neutral one moved inside the shared shape space (a shifted shape mean)
    sd = body_mod.build_body("neutral").smpl["shapedirs"]
    np.testing.assert_allclose(m, n + sd @ body_mod.GENDER_BETAS["male"], atol=1e-12)
    assert (m[:, 1].max() - m[:, 1].min()) > (f[:, 1].max() - f[:, 1].min())  # males taller on average


def test_zero_pose_is_template_and_joints_follow_shape(smpl):
    tmpl = torch.tensor(load_smpl_file(smpl.model_file)["v_template"], dtype=torch.float32)
    out = smpl(_rest(1), torch.zeros(1, 10))
    assert torch.allclose(out.vertices[0], tmpl, atol=1e-6)
    tall = smpl(_rest(1), torch.tensor([[2.0] + [0.0] * 9]))
    height = lambda o: (o.joints[0, 25 + 13, 1] - o.joints[0, 25 + 0, 1]).item()  # noqa: E731 head top - ankle
    assert height(tall) > height(out) + 0.1  # beta 0 = stature: joints move with the surface
    longer_legs = smpl(_rest(1), torch.tensor([[0, 0, 2.0] + [0.0] * 7]))
    knee_to_ankle = lambda o: (o.joints24[0, 4] - o.joints24[0, 7]).norm().item()  # noqa: E731
    assert knee_to_ankle(longer_legs) > knee_to_ankle(out) + 0.03


def test_spin_joints_are_anatomical(smpl):
    j = smpl(_rest(1), torch.zeros(1, 10)).joints[0].numpy()  # (49, 3): x = subject's left, y up, z forward
    name = {n: i for i, n in enumerate(C.JOINT_NAMES)}
    rh, lh = j[name["Right Hip"]], j[name["Left Hip"]]
    assert rh[0] < -0.05 and lh[0] > 0.05 and abs(rh[0] + lh[0]) < 1e-6 and abs(rh[1] - lh[1]) < 1e-6
    assert j[name["Top of Head (LSP)"], 1] > j[name["Head (H36M)"], 1] > j[name["Nose"], 1] > j[name["Neck (LSP)"], 1]
    assert j[name["Neck (LSP)"], 1] > j[name["Thorax (MPII)"], 1] > j[name["Spine (H36M)"], 1] > rh[1]
    assert j[name["Nose"], 2] > j[name["Head (H36M)"], 2] + 0.05  # the nose is at the front of the head
    assert j[name["Left Eye"], 0] > 0 > j[name["Right Eye"], 0] and j[name["OP LEar"], 0] > j[name["Left Eye"], 0]
    for side in ("L", "R"):  # toes in front of the ankles, heels behind, both near the floor
        ankle = j[name[f"OP {side}Ankle"]]
        assert j[name[f"OP {side}BigToe"], 2] > ankle[2] + 0.1 and j[name[f"OP {side}Heel"], 2] < ankle[2] - 0.03
        assert j[name[f"OP {side}Heel"], 1] < ankle[1] - 0.05
    assert abs(abs(j[name["OP LBigToe"], 0]) - abs(j[name["OP RBigToe"], 0])) < 1e-6
    assert abs(j[name["OP LBigToe"], 0]) < abs(j[name["OP LSmallToe"], 0])  # big toe on the inside
    assert j[name["Left Wrist"], 0] > j[name["Left Elbow"], 0] > j[name["Left Shoulder"], 0] > 0.1


def test_j14_of_gt_and_prediction_paths_agree(smpl):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rot = torch.tensor(sample_body_pose(rng, 4), dtype=torch.float32)
    rotmat = torch.cat([torch.eye(3).expand(4, 1, 3, 3), rot], 1)
    out = smpl(rotmat, torch.randn(4, 10))
    h36m = smpl.joints_h36m(out.vertices)
    gt = out.joints[:, 25:]  # J24
    torch.testing.assert_close(h36m[:, C.H36M_TO_J17], gt[:, C.J24_TO_J17], atol=1e-5, rtol=0)
    # the H36M pelvis (row 0) is the J24 Pelvis (MPII), so root-centring agrees too
    torch.testing.assert_close(h36m[:, 0], gt[:, 14], atol=1e-5, rtol=0)
    # ring regressors follow the skinning: the regressed posed joints equal the kinematic joints
    jreg = torch.tensor(np.asarray(load_smpl_file(smpl.model_file)["J_regressor"]), dtype=torch.float32)  # npz: dense
    torch.testing.assert_close(torch.einsum("jv,bvc->bjc", jreg, out.vertices), out.joints24, atol=2e-4, rtol=0)


def test_pose_limits_bend_one_way():
    rot = sample_body_pose(np.random.default_rng(1), 500)
    shin = rot[:, 4 - 1] @ np.array([0, -1.0, 0])  # left knee: the shin swings backwards (-z), never forwards
    assert (shin[:, 2] < 0.05).all() and (shin[:, 2] < -0.5).mean() > 0.2
    forearm = rot[:, 18 - 1] @ np.array([1.0, 0, 0])  # left elbow: the forearm folds forwards (+z)
    assert (forearm[:, 2] > -0.1).all() and (forearm[:, 2] > 0.5).mean() > 0.2


def test_mean_params():
    p = body_mod.mean_params()
    assert p["pose"].shape == (144,) and p["shape"].shape == (10,) and p["pose"].dtype == np.float32
    np.testing.assert_array_equal(p["pose"][:6], [1, 0, 0, -1, 0, 0])
    np.testing.assert_array_equal(p["cam"], np.array([0.9, 0, 0], np.float32))


def test_mean_params_of_the_root_are_the_training_mean(root):
    """smpl_mean_params.npz holds the chordal mean of the training fits' body rotations (as SPIN's file holds
    its data's mean), and a model trained on the root starts there."""
    from compress.geometry import batch_rodrigues, rot6d_to_rotmat
    from compress.recipe import load_recipe
    from compress.start import initial_model

    fits = np.concatenate([np.load(f) for f in sorted((root / "static_fits").glob("*_fits.npy"))])
    rot = batch_rodrigues(torch.tensor(fits[:, 3:72], dtype=torch.float64).reshape(-1, 3)).reshape(-1, 23, 3, 3)
    u, _, vt = torch.linalg.svd(rot.mean(0))
    expected = u @ vt  # every mean here is a proper rotation (det +1): no reflection fix needed
    with np.load(root / C.SMPL_MEAN_PARAMS) as f:
        pose, shape = torch.tensor(f["pose"]), f["shape"]
    got = rot6d_to_rotmat(pose).reshape(24, 3, 3).double()
    assert torch.allclose(got[0], torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64)))
    assert torch.allclose(got[1:], expected, atol=1e-5)
    assert (got[1:] - torch.eye(3, dtype=torch.float64)).abs().amax() > 0.1  # not the T-pose
    np.testing.assert_allclose(shape, fits[:, 72:].mean(0), atol=1e-5)
    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "smoke.yaml",
                         [f"data.root={root}", "model.name=hmr_tiny", "model.img_res=32"], env=False)
    model, _ = initial_model(recipe)
    assert torch.allclose(model.init_pose.reshape(-1), pose) and "mean_params" not in model.config["overrides"]


# ----------------------------------------------------------------------------------------------- the data root

FIELDS = {
    "3dpw_test": {"imgname", "center", "scale", "pose", "shape", "gender"},
    "h36m_valid_protocol1": {"imgname", "center", "scale", "S"},
    "h36m_valid_protocol2": {"imgname", "center", "scale", "S"},
    "mpi_inf_3dhp_valid": {"imgname", "center", "scale", "part", "S"},
    "lsp_dataset_test": {"imgname", "maskname", "partname", "center", "scale", "part"},
    "h36m_train": {"imgname", "center", "scale", "part", "S"},
    "lsp_dataset_original_train": {"imgname", "center", "scale", "part", "openpose", "has_smpl"},
    "mpii_train": {"imgname", "center", "scale", "part", "openpose", "has_smpl"},
    "hr-lspet_train": {"imgname", "center", "scale", "part", "openpose", "has_smpl"},
    "coco_2014_train": {"imgname", "center", "scale", "part", "openpose", "has_smpl"},
    "mpi_inf_3dhp_train": {"imgname", "center", "scale", "part", "openpose", "S", "pose", "shape", "has_smpl"},
}
SHAPES = {"center": (2,), "scale": (), "part": (24, 3), "openpose": (25, 3), "S": (24, 4), "pose": (72,),
          "shape": (10,), "has_smpl": (), "gender": (), "cam": (3,)}
FOLDER_OF = {**{v: k for k, v in C.EVAL_DATASETS.items()}, **{v: k for k, v in C.TRAIN_DATASETS.items()}}


def _npz(root, stem):
    with np.load(root / "dataset_extras" / f"{stem}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_root_has_every_file(root):
    for name in ("smpl/SMPL_NEUTRAL.npz", "smpl/SMPL_MALE.pkl", "smpl/SMPL_FEMALE.npz", "smpl_mean_params.npz",
                 "J_regressor_extra.npy", "J_regressor_h36m.npy", f"smpl/{body_mod.PART_LABELS_FILE}"):
        assert (root / name).is_file(), name
    assert np.load(root / "J_regressor_h36m.npy").shape == (17, 6890)
    assert np.load(root / "J_regressor_extra.npy").dtype == np.float64
    stems = set(C.EVAL_DATASETS.values()) | set(C.TRAIN_DATASETS.values())
    assert stems == set(FIELDS)
    for stem in stems:
        d = _npz(root, stem)
        assert FIELDS[stem] <= set(d), (stem, FIELDS[stem] - set(d))
        n = len(d["imgname"])
        assert n >= 2
        for k, v in d.items():
            if k in SHAPES:
                assert v.shape == (n, *SHAPES[k]), (stem, k, v.shape)
            if k in ("center", "scale", "part", "openpose", "S", "pose", "shape"):
                assert v.dtype == np.float64 and np.isfinite(v).all(), (stem, k)
        assert d["imgname"].dtype.kind == "U"
        folder = root / C.IMAGE_FOLDERS[FOLDER_OF[stem]]
        for name in d["imgname"]:
            assert (folder / name).is_file(), (stem, name)
        if "S" in d:  # root-centred metres, 17 valid joints
            assert np.allclose(d["S"][:, 14, :3], 0) and (d["S"][..., 3].sum(1) == 17).all()
            assert (np.abs(d["S"][..., :3]) < 1.5).all()
    d = _npz(root, "3dpw_test")
    assert set(d["gender"]) <= {"m", "f"}
    assert (_npz(root, "coco_2014_train")["has_smpl"] == 0).all()
    assert (_npz(root, "mpi_inf_3dhp_train")["has_smpl"] == 1).all()


def test_h36m_protocols_share_frames(root):
    p1, p2 = _npz(root, "h36m_valid_protocol1"), _npz(root, "h36m_valid_protocol2")
    assert len(p1["imgname"]) == 4 * len(p2["imgname"])
    assert set(p2["imgname"]) <= set(p1["imgname"]) and all(".60457274_" in n for n in p2["imgname"])
    n = len(p2["imgname"])
    view0, view3 = p1["S"][:n, :, :3], p1["S"][3 * n:, :, :3]
    # the same frames from another camera: same bone lengths, different coordinates
    bone = lambda s: np.linalg.norm(s[:, 1] - s[:, 0], axis=-1)  # noqa: E731 (R knee - R ankle)
    np.testing.assert_allclose(bone(view0), bone(view3), atol=1e-9)
    assert np.abs(view0 - view3).max() > 0.05


def test_ground_truth_is_consistent_with_the_body_model(root, smpl):
    for stem, sel24, sel in (("h36m_valid_protocol1", C.J24_TO_J14, C.H36M_TO_J14),
                             ("mpi_inf_3dhp_valid", C.J24_TO_J17, C.H36M_TO_J17)):
        d = _npz(root, stem)
        out = smpl.forward_axis_angle(torch.tensor(d["pose"], dtype=torch.float32),
                                      torch.tensor(d["shape"], dtype=torch.float32))
        h = smpl.joints_h36m(out.vertices)
        pred = (h[:, sel] - h[:, :1]).numpy()
        err_mm = 1000 * np.linalg.norm(pred - d["S"][:, sel24, :3], axis=-1).mean()
        assert err_mm < 0.01, (stem, err_mm)


def test_keypoints_land_on_the_rendered_body(root):
    d = _npz(root, "lsp_dataset_test")
    for i in range(len(d["imgname"])):
        mask = np.array(Image.open(root / C.UPI_S1H_FOLDER / d["maskname"][i]))
        parts = np.array(Image.open(root / C.UPI_S1H_FOLDER / d["partname"][i]))
        img = Image.open(root / C.IMAGE_FOLDERS["lsp"] / d["imgname"][i])
        assert mask.shape == parts.shape == (img.height, img.width)
        assert set(np.unique(mask)) <= {0, 255} and set(np.unique(parts)) <= {0, 1, 2, 3, 4, 5, 6, 255}
        assert ((mask > 0) == (parts > 0)).all()
        for j in (2, 3, 8, 9, 12):  # hips, shoulders, neck (LSP): inside the silhouette
            x, y, vis = d["part"][i, j]
            if vis:
                assert mask[int(y), int(x)] > 0, (i, j)
        # the box holds the body: 1.2 x the joints' extent, with jitter
        vis = d["part"][i, :, 2] > 0
        extent = np.ptp(d["part"][i, vis, :2], axis=0).max()
        assert 1.0 < 200 * d["scale"][i] / extent < 1.5
    # torso pixels of the part map: label 2 sits around the thorax-pelvis midpoint of image 0
    x, y = d["part"][0, [2, 3, 8, 9], :2].mean(0)
    assert np.array(Image.open(root / C.UPI_S1H_FOLDER / d["partname"][0]))[int(y), int(x)] in (2, 3, 4, 255)


def test_deterministic_by_seed(tmp_path, root):
    again = generate_root(tmp_path / "again", size="small", seed=0)
    other = generate_root(tmp_path / "other", size="small", seed=1)
    for stem in ("3dpw_test", "lsp_dataset_test", "h36m_train"):
        a, b, c = _npz(root, stem), _npz(again, stem), _npz(other, stem)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
        assert not np.array_equal(a["center"], c["center"])
    name = _npz(root, "lsp_dataset_test")["imgname"][0]
    im = lambda r: np.array(Image.open(r / "lsp" / name))  # noqa: E731
    np.testing.assert_array_equal(im(root), im(again))


def test_more_training_images_leave_the_evaluation_sets_as_they_were(tmp_path, root, monkeypatch):
    from compress.data import synthetic

    assert all(synthetic.SIZES["large"][k] == synthetic.SIZES["default"][k] for k in synthetic.EVAL_FILES)
    assert synthetic.SIZES["large"]["h36m_train"] == 10 * synthetic.SIZES["default"]["h36m_train"]
    small = synthetic.SIZES["small"]  # the same rule at the small size: twice the training images
    monkeypatch.setitem(synthetic.SIZES, "small2",
                        {k: v if k in synthetic.EVAL_FILES else 2 * v for k, v in small.items()})
    more = generate_root(tmp_path / "more", size="small2", seed=0)
    for stem in ("3dpw_test", "h36m_valid_protocol1", "mpi_inf_3dhp_valid", "lsp_dataset_test"):
        a, b = _npz(root, stem), _npz(more, stem)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    name = _npz(root, "3dpw_test")["imgname"][-1]
    im = lambda r: np.array(Image.open(r / "3dpw" / name))  # noqa: E731
    np.testing.assert_array_equal(im(root), im(more))
    assert len(_npz(more, "h36m_train")["imgname"]) == 2 * small["h36m_train"]


def test_complete_root_is_kept(root, caplog):
    stamp = (root / "dataset_extras" / "3dpw_test.npz").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="compress.data.synthetic"):
        generate_root(root, size="small", seed=0)
    assert (root / "dataset_extras" / "3dpw_test.npz").stat().st_mtime_ns == stamp
    assert "complete" in caplog.text


class _Oracle(torch.nn.Module):
    """A "model" that returns the ground truth of consecutive samples of one dataset (unshuffled evaluation)."""

    def __init__(self, d):
        super().__init__()
        self.d, self.i, self.img_res = d, 0, 224
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, img):
        from compress.geometry import batch_rodrigues, rotmat_to_rot6d

        b = img.shape[0]
        sl = slice(self.i, self.i + b)
        self.i += b
        rot = batch_rodrigues(torch.tensor(self.d["pose"][sl], dtype=torch.float32).reshape(-1, 3)).reshape(b, 24, 3, 3)
        cam = torch.tensor(self.d["cam"][sl], dtype=torch.float32)
        return {"rotmat": rot, "betas": torch.tensor(self.d["shape"][sl], dtype=torch.float32), "cam": cam,
                "pose6d": rotmat_to_rot6d(rot).reshape(b, 144), "features": torch.zeros(b, 1)}


def test_ground_truth_oracle_scores_perfectly(root):
    from compress.eval.protocols import evaluate

    for key, stem in C.EVAL_DATASETS.items():
        d = _npz(root, stem)
        if key == "3dpw":  # the GT is gendered, predictions use the neutral model: shift betas by the gender mean
            d["shape"] = d["shape"] + np.stack([body_mod.GENDER_BETAS["male" if g == "m" else "female"]
                                                for g in d["gender"]])
        res = evaluate(_Oracle(d), root, datasets=[key], batch_size=3)[key]
        if key == "lsp":
            assert res["fb_acc"] > 99.0 and res["parts_acc"] > 98.5 and res["parts_f1"] > 0.95, res
        else:
            assert res["mpjpe_mm"] < 0.01 and res["pa_mpjpe_mm"] < 0.01, (key, res)


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    from compress.errors import UserError

    (tmp_path / "dataset_extras").mkdir()
    (tmp_path / "dataset_extras" / "h36m_train.npz").write_bytes(b"real data")
    with pytest.raises(UserError, match="not a synthetic data root"):
        generate_root(tmp_path, size="small")
    assert (tmp_path / "dataset_extras" / "h36m_train.npz").read_bytes() == b"real data"


def test_progress_counts_every_image(tmp_path):
    from compress.data.synthetic import total_samples

    calls = []
    generate_root(tmp_path / "r", size="small", seed=3, img_size=96, progress=lambda *a: calls.append(a))
    assert calls[-1][1] == calls[-1][2] == total_samples("small")
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)
    assert {c[0] for c in calls} >= {"3dpw_test", "h36m_valid_protocol1", "lsp_dataset_test", "coco_2014_train"}
    assert Image.open(tmp_path / "r" / "lsp" / "images" / "im1001.jpg").size == (96, 96)
