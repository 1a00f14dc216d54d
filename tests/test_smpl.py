import io
import pickle
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from compress import constants
from compress.data import body as body_mod
from compress.errors import UserError
from compress.smpl import SMPL, load_smpl_file


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("smplroot")
    body_mod.write_body_files(r)
    return r


def _fake_chumpy(tmp_path, monkeypatch):
    """A module tree `chumpy.ch` with a Ch class that pickles its value in `x`, like the real one."""
    pkg = tmp_path / "fakepkgs" / "chumpy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "ch.py").write_text(textwrap.dedent("""
        class Ch(object):
            def __init__(self, x):
                self.x = x
                self._dirty_vars = set()
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "fakepkgs"))
    import chumpy.ch  # noqa: F401  (the fake one)

    return sys.modules["chumpy.ch"]


def test_chumpy_pickle_loads_without_chumpy(tmp_path, monkeypatch):
    ch = _fake_chumpy(tmp_path, monkeypatch)
    rng = np.random.default_rng(0)
    data = {
        "v_template": ch.Ch(rng.normal(size=(5, 3))),
        "shapedirs": ch.Ch(rng.normal(size=(5, 3, 2))),
        "J_regressor": sp.csc_matrix(np.eye(2, 5)),
        "f": np.array([[0, 1, 2]], dtype=np.uint32),
        "bs_type": "lrotmin",
    }
    path = tmp_path / "model.pkl"
    with open(path, "wb") as f:
        pickle.dump(data, f, protocol=2)
    for name in [m for m in sys.modules if m == "chumpy" or m.startswith("chumpy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "fakepkgs" not in p])

    out = load_smpl_file(path)
    assert "chumpy" not in sys.modules  # nothing imported the (fake) chumpy
    assert isinstance(out["v_template"], np.ndarray)
    np.testing.assert_array_equal(out["v_template"], data["v_template"].x)
    np.testing.assert_array_equal(out["shapedirs"], data["shapedirs"].x)
    assert sp.issparse(out["J_regressor"])
    np.testing.assert_array_equal(out["J_regressor"].toarray(), np.eye(2, 5))
    assert out["bs_type"] == "lrotmin"


class _Py2StylePickler(pickle.Pickler):
    """Writes arrays the way Python 2 numpy did: array bytes as a (latin-1) str."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray:
            fn, args, state = obj.__reduce__()
            state = (*state[:4], state[4].decode("latin1") if isinstance(state[4], bytes) else state[4])
            return fn, args, state
        return NotImplemented


def test_python2_style_smpl_pickle(tmp_path, monkeypatch):
    ch = _fake_chumpy(tmp_path, monkeypatch)
    data = {"shapedirs": ch.Ch(np.arange(24.0).reshape(2, 3, 4)), "J_regressor": sp.csc_matrix(np.eye(3)),
            "kintree_table": np.array([[4294967295, 0], [0, 1]]), "bs_style": "lbs"}
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(data)
    # Python 2 module names, as in the official files (GLOBAL opcodes are newline-terminated text)
    raw = buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    raw = raw.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    assert b"numpy.core.multiarray\n_reconstruct" in raw and b"scipy.sparse.csc\n" in raw
    path = tmp_path / "basicModel_neutral.pkl"
    path.write_bytes(raw)
    out = load_smpl_file(path)
    np.testing.assert_array_equal(out["shapedirs"], np.arange(24.0).reshape(2, 3, 4))
    np.testing.assert_array_equal(out["J_regressor"].toarray(), np.eye(3))
    assert out["kintree_table"][0, 0] == 4294967295 and out["bs_style"] == "lbs"


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "SMPL_NEUTRAL.pkl"
    with open(path, "wb") as f:
        pickle.dump({"v_template": _Evil(marker)}, f, protocol=2)
    with pytest.raises(UserError, match="system") as err:
        load_smpl_file(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_eval_builtin_is_refused(tmp_path):
    path = tmp_path / "m.pkl"
    # GLOBAL builtins.eval, then REDUCE: a classic payload, hand-written (protocol 2 opcodes).
    path.write_bytes(b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print(12345)\x85R.")
    with pytest.raises(UserError, match="builtins.eval"):
        load_smpl_file(path)


def test_npz_and_pkl_agree(root):
    a = load_smpl_file(root / "smpl" / "SMPL_NEUTRAL.npz")
    b = load_smpl_file(root / "smpl" / "SMPL_NEUTRAL.pkl")
    for k in ("v_template", "shapedirs", "weights", "posedirs", "f", "kintree_table"):
        np.testing.assert_allclose(np.asarray(a[k], float), np.asarray(b[k], float))
    np.testing.assert_allclose(a["J_regressor"], b["J_regressor"].toarray())


def _zero_rotmat(b):
    return torch.eye(3).expand(b, 24, 3, 3).clone()


@pytest.mark.parametrize("ext", ["npz", "pkl"])
def test_zero_pose_gives_template(root, ext):
    model = SMPL(root / "smpl" / f"SMPL_NEUTRAL.{ext}")
    out = model(_zero_rotmat(2), torch.zeros(2, 10))
    tmpl = torch.tensor(load_smpl_file(root / "smpl" / "SMPL_NEUTRAL.npz")["v_template"], dtype=torch.float32)
    assert out.vertices.shape == (2, 6890, 3)
    assert torch.allclose(out.vertices[0], tmpl, atol=1e-5)
    assert out.joints.shape == (2, 49, 3)
    assert out.joints24.shape == (2, 24, 3)
    assert model.joints_h36m(out.vertices).shape == (2, 17, 3)


def test_model_path_forms_and_axis_angle(root):
    by_root, by_dir = SMPL(root), SMPL(root / "smpl", gender="female")
    assert by_root.model_file.name == "SMPL_NEUTRAL.npz" and by_dir.model_file.name == "SMPL_FEMALE.npz"
    torch.manual_seed(0)
    pose = 0.3 * torch.randn(3, 72)
    betas = torch.randn(3, 10)
    a = by_root.forward_axis_angle(pose, betas)
    from compress.geometry import batch_rodrigues

    b = by_root(batch_rodrigues(pose.reshape(-1, 3)).reshape(3, 24, 3, 3), betas)
    assert torch.allclose(a.vertices, b.vertices)
    # SPIN's joint map: OP MidHip (8) is SMPL's pelvis, GT Right Ankle (25) is SMPL joint 8.
    assert torch.allclose(a.joints[:, 8], a.joints24[:, 0]) and torch.allclose(a.joints[:, 25], a.joints24[:, 8])


def test_missing_files_are_user_errors(tmp_path, root):
    with pytest.raises(UserError, match="SMPL_NEUTRAL"):
        SMPL(tmp_path)
    (tmp_path / "smpl").mkdir()
    (tmp_path / "smpl" / "SMPL_NEUTRAL.npz").write_bytes((root / "smpl" / "SMPL_NEUTRAL.npz").read_bytes())
    with pytest.raises(UserError, match="J_regressor_extra"):
        SMPL(tmp_path)
    with pytest.raises(UserError, match="gender"):
        SMPL(root, gender="other")


def test_joint_selectors_are_spins():
    """SPIN's constants.py, written out (not derived from our own lists)."""
    assert constants.H36M_TO_J17 == [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10, 0, 7, 9]
    assert constants.H36M_TO_J14 == [6, 5, 4, 1, 2, 3, 16, 15, 14, 11, 12, 13, 8, 10]
    assert constants.J24_TO_J17 == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18, 14, 16, 17]
    assert constants.J24_TO_J14 == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 18]
