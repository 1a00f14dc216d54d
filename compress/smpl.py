"""SMPL on smplx with SPIN's 49 joints, H36M-17 joints, and a chumpy-free, restricted SMPL file loader.

Facts: ../shared/reference/spin_protocol.md section 2. smplx never unpickles anything here: the arrays are
read by `load_smpl_file` (npz without pickle, or a restricted unpickler for SMPL's Python-2 `.pkl`) and
handed to smplx through its `data_struct` argument.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import smplx
import torch
import torch.nn as nn
from smplx.lbs import batch_rigid_transform
from smplx.utils import Struct

from compress import constants
from compress.errors import UserError
from compress.geometry import batch_rodrigues

log = logging.getLogger(__name__)

GENDERS = ("neutral", "male", "female")
SMPL_KEYS = ("v_template", "shapedirs", "posedirs", "weights", "J_regressor", "kintree_table", "f")
J_REGRESSOR_EXTRA = "J_regressor_extra.npy"
J_REGRESSOR_H36M = "J_regressor_h36m.npy"


# ----------------------------------------------------------------------------------------------- file loading


class _ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling: keeps the pickled state, runs no code."""

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}


class _SparseStandIn:
    """Takes the place of a scipy.sparse matrix class; rebuilt into a real matrix from its array state."""

    format = "csc"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}


def _sparse_standin(fmt: str) -> type:
    return type(f"_Sparse_{fmt}", (_SparseStandIn,), {"format": fmt})


_SPARSE_FORMATS = {"csc_matrix": "csc", "csr_matrix": "csr", "coo_matrix": "coo", "csc_array": "csc",
                   "csr_array": "csr", "coo_array": "coo"}


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise pickle.UnpicklingError("only latin-1 text-to-bytes is allowed")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], object]:
    from numpy._core import multiarray, numeric

    ok = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        ok[(mod, "_reconstruct")] = multiarray._reconstruct
        ok[(mod, "scalar")] = multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        ok[(mod, "_frombuffer")] = numeric._frombuffer
    ok[("numpy", "ndarray")] = np.ndarray
    ok[("numpy", "dtype")] = np.dtype
    ok[("numpy.dtypes", "Float64DType")] = type(np.dtype("float64"))
    ok[("numpy.dtypes", "Float32DType")] = type(np.dtype("float32"))
    ok[("numpy.dtypes", "Int64DType")] = type(np.dtype("int64"))
    ok[("numpy.dtypes", "Int32DType")] = type(np.dtype("int32"))
    ok[("numpy.dtypes", "UInt32DType")] = type(np.dtype("uint32"))
    ok[("_codecs", "encode")] = _latin1_bytes  # how protocol-2 pickles written by Python 3 store bytes
    for mod in ("copyreg", "copy_reg"):  # Python 2 names arrive unmapped in a custom find_class
        ok[(mod, "_reconstructor")] = __import__("copyreg")._reconstructor
    for mod in ("builtins", "__builtin__"):  # plain containers only (chumpy's state holds sets)
        for cls in (object, set, frozenset, list, dict, tuple, complex, slice):
            ok[(mod, cls.__name__)] = cls
    return ok


class _RestrictedUnpickler(pickle.Unpickler):
    """Admits numpy reconstruction helpers, scipy.sparse matrices and chumpy arrays (as stand-ins); nothing else."""

    def __init__(self, file, *, path: Path):
        super().__init__(file, encoding="latin1")
        self._path = path
        self._ok = _numpy_globals()

    def find_class(self, module: str, name: str):
        if (module, name) in self._ok:
            return self._ok[(module, name)]
        if module.startswith("scipy.sparse") and name in _SPARSE_FORMATS:
            return _sparse_standin(_SPARSE_FORMATS[name])
        if module == "chumpy" or module.startswith("chumpy."):
            return _ChumpyStandIn
        raise UserError(
            f"refusing to load {self._path}: it asks for the Python global {module}.{name}, which an SMPL file "
            "never needs (only numpy, scipy.sparse and chumpy arrays are allowed); use the official SMPL file"
        )


def _to_plain(obj, path: Path, key: str):
    """Replace chumpy / sparse stand-ins by numpy arrays / scipy.sparse matrices (recursively for containers)."""
    if isinstance(obj, _ChumpyStandIn):
        state = getattr(obj, "state", {})
        for field in ("x", "a"):  # a plain Ch keeps its value in `x`; simple wrappers keep their input in `a`
            if field in state:
                return np.asarray(_to_plain(state[field], path, key))
        raise UserError(
            f"cannot read {path}: entry {key!r} is a chumpy expression without a stored value "
            f"(fields {sorted(state)}); export the model with plain arrays (e.g. an .npz)"
        )
    if isinstance(obj, _SparseStandIn):
        s = getattr(obj, "state", {})
        shape = s.get("_shape", s.get("shape"))
        if obj.format == "coo":
            row, col = s.get("row", s.get("coords", (None, None))[0]), s.get("col")
            return sp.coo_matrix((s["data"], (row, col)), shape=shape).tocsc()
        cls = sp.csc_matrix if obj.format == "csc" else sp.csr_matrix
        return cls((s["data"], s["indices"], s["indptr"]), shape=shape)
    if isinstance(obj, dict):
        return {k: _to_plain(v, path, k) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v, path, key) for v in obj)
    return obj


def load_smpl_file(path: str | Path) -> dict:
    """Read an SMPL model file (`.npz`, or the official Python-2 `.pkl` with chumpy objects) without chumpy.

    Returns a dict of numpy arrays (J_regressor may be a scipy.sparse matrix). A `.pkl` asking for any
    global beyond numpy / scipy.sparse / chumpy arrays raises UserError before anything runs.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"SMPL model file not found: {path} (run `compress data synth` or point --data at a root)")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except ValueError as e:
            raise UserError(f"cannot read {path}: {e} (SMPL .npz files must hold plain arrays)") from None
        if "J_regressor" not in data and "J_regressor_data" in data:  # sparse regressor split into arrays
            data["J_regressor"] = sp.csc_matrix(
                (data.pop("J_regressor_data"), data.pop("J_regressor_indices"), data.pop("J_regressor_indptr")),
                shape=tuple(data.pop("J_regressor_shape")),
            )
        return data
    try:
        with open(path, "rb") as f:
            raw = _RestrictedUnpickler(f, path=path).load()
    except UserError:
        raise
    except Exception as e:  # truncated or garbled file: one line, no traceback
        raise UserError(f"cannot read SMPL file {path}: {type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"cannot read {path}: expected a dict of arrays, got {type(raw).__name__}")
    return _to_plain(raw, path, "")


def _dense(x) -> np.ndarray:
    return np.asarray(x.todense() if sp.issparse(x) else x)


# ----------------------------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class SMPLResult:
    vertices: torch.Tensor  # (B, 6890, 3)
    joints: torch.Tensor  # (B, 49, 3) SPIN's order (constants.JOINT_NAMES)
    joints24: torch.Tensor  # (B, 24, 3) SMPL's own kinematic joints


def find_model_file(model_path: str | Path, gender: str = "neutral") -> Path:
    """Resolve a data root, its smpl/ folder, or a file to the SMPL model file of `gender` (.npz preferred)."""
    if gender not in GENDERS:
        raise UserError(f"unknown SMPL gender {gender!r}; choose one of {', '.join(GENDERS)}")
    p = Path(model_path)
    if p.is_file():
        return p
    for folder in (p, p / "smpl"):
        for ext in (".npz", ".pkl"):
            f = folder / f"SMPL_{gender.upper()}{ext}"
            if f.is_file():
                return f
    raise UserError(
        f"no SMPL_{gender.upper()}.npz/.pkl in {p} or {p / 'smpl'}: run `compress data synth` for a synthetic "
        "root, or copy the official SMPL files into <root>/smpl/"
    )


def _load_regressor(arg, model_file: Path, name: str, rows: int) -> np.ndarray:
    if arg is not None and not isinstance(arg, (str, Path)):
        reg = np.asarray(arg, dtype=np.float64)
    else:
        candidates = [Path(arg)] if arg is not None else [model_file.parent / name, model_file.parent.parent / name]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise UserError(f"{name} not found (looked in {', '.join(str(c) for c in candidates)}); it belongs in "
                            "the data root next to smpl/")
        try:
            reg = np.load(found[0], allow_pickle=False)
        except ValueError as e:
            raise UserError(f"cannot read {found[0]}: {e}") from None
    if reg.shape != (rows, constants.NUM_VERTICES):
        raise UserError(f"{name} must be ({rows}, {constants.NUM_VERTICES}), got {reg.shape}")
    return reg


class SMPL(nn.Module):
    """smplx's SMPL with SPIN's 49-joint output and H36M regressor; a plain function of (rotmat, betas)."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        gender: str = "neutral",
        j_regressor_extra: str | Path | np.ndarray | None = None,
        j_regressor_h36m: str | Path | np.ndarray | None = None,
    ):
        super().__init__()
        self.model_file = find_model_file(model_path, gender)
        data = load_smpl_file(self.model_file)
        missing = [k for k in SMPL_KEYS if k not in data]
        if missing:
            raise UserError(f"{self.model_file} is not an SMPL model: missing {', '.join(missing)}")
        struct = Struct(**{k: (_dense(data[k]) if k == "J_regressor" else np.asarray(data[k])) for k in SMPL_KEYS})
        # smplx prints a warning for 10-beta models; library code stays quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smpl = smplx.SMPL(str(self.model_file), data_struct=struct, create_transl=False, gender=gender,
                                   create_betas=False, create_global_orient=False, create_body_pose=False)
        extra = _load_regressor(j_regressor_extra, self.model_file, J_REGRESSOR_EXTRA, 9)
        h36m = _load_regressor(j_regressor_h36m, self.model_file, J_REGRESSOR_H36M, 17)
        self.register_buffer("J_regressor_extra", torch.tensor(extra, dtype=torch.float32), persistent=False)
        self.register_buffer("J_regressor_h36m", torch.tensor(h36m, dtype=torch.float32), persistent=False)
        self.register_buffer("joint_map", torch.tensor(constants.JOINT_MAP, dtype=torch.long), persistent=False)
        self.gender = gender

    @property
    def faces(self) -> torch.Tensor:
        """(F, 3) long triangle indices."""
        return self.smpl.faces_tensor

    def forward(self, rotmat: torch.Tensor, betas: torch.Tensor) -> SMPLResult:
        """rotmat (B, 24, 3, 3) (joint 0 = global orientation), betas (B, 10) -> SMPLResult."""
        out = self.smpl(betas=betas, body_pose=rotmat[:, 1:], global_orient=rotmat[:, :1], pose2rot=False)
        verts = out.vertices  # (B, 6890, 3)
        extra = torch.einsum("jv,bvc->bjc", self.J_regressor_extra.to(verts.dtype), verts)  # (B, 9, 3)
        all_joints = torch.cat([out.joints, extra], dim=1)  # (B, 54, 3) = 24 + 21 vertex-picked + 9
        return SMPLResult(vertices=verts, joints=all_joints[:, self.joint_map], joints24=out.joints[:, :24])

    def forward_axis_angle(self, pose: torch.Tensor, betas: torch.Tensor) -> SMPLResult:
        """pose (B, 72) axis-angle (SPIN's npz `pose`), betas (B, 10) -> SMPLResult."""
        rotmat = batch_rodrigues(pose.reshape(-1, 3)).reshape(pose.shape[0], 24, 3, 3)
        return self.forward(rotmat, betas)

    def joints_h36m(self, vertices: torch.Tensor) -> torch.Tensor:
        """(B, 6890, 3) -> (B, 17, 3) with J_regressor_h36m (row 0 = pelvis)."""
        return torch.einsum("jv,bvc->bjc", self.J_regressor_h36m.to(vertices.dtype), vertices)


# ----------------------------------------------------------------------------------------------- joints only


class SMPLJoints(nn.Module):
    """SPIN's 49 joints of compress.smpl.SMPL without the full mesh: the losses need joints only (the vertex L1 is
    off by default), and the joints depend on ~300 of the 6890 vertices (smplx's 21 vertex-picked joints and the
    non-zero columns of J_regressor_extra). Skinning only those makes SMPL a few percent of a training step.
    Same output as SMPL(rotmat, betas).joints up to float rounding; `vertices` is None."""

    def __init__(self, smpl: nn.Module) -> None:
        super().__init__()
        body = smpl.smpl  # the smplx.SMPL inside compress.smpl.SMPL
        picked = body.vertex_joint_selector.extra_joints_idxs.long()  # (21,)
        extra = smpl.J_regressor_extra  # (9, 6890)
        used = torch.unique(torch.cat([picked, extra.abs().sum(0).nonzero().flatten()]))  # (S,)
        n_pose = body.posedirs.shape[0]
        reg = body.J_regressor  # (24, 6890)
        self.register_buffer("j_template", reg @ body.v_template, persistent=False)  # (24, 3)
        self.register_buffer("j_shapedirs", torch.einsum("jv,vcl->jcl", reg, body.shapedirs), persistent=False)
        self.register_buffer("v_template", body.v_template[used], persistent=False)  # (S, 3)
        self.register_buffer("shapedirs", body.shapedirs[used], persistent=False)  # (S, 3, L)
        self.register_buffer("posedirs", body.posedirs.view(n_pose, -1, 3)[:, used].reshape(n_pose, -1),
                             persistent=False)  # (207, S * 3)
        self.register_buffer("weights", body.lbs_weights[used], persistent=False)  # (S, 24)
        self.register_buffer("parents", body.parents.clone(), persistent=False)
        self.register_buffer("extra", extra[:, used], persistent=False)  # (9, S)
        self.register_buffer("picked", torch.searchsorted(used, picked), persistent=False)  # positions in `used`
        self.register_buffer("joint_map", smpl.joint_map.clone(), persistent=False)

    def forward(self, rotmat: torch.Tensor, betas: torch.Tensor) -> "SMPLJointsResult":
        b = rotmat.shape[0]
        n_betas = self.shapedirs.shape[-1]
        betas = betas[:, :n_betas]
        joints_rest = self.j_template + torch.einsum("bl,jcl->bjc", betas, self.j_shapedirs)  # (B, 24, 3)
        v = self.v_template + torch.einsum("bl,scl->bsc", betas, self.shapedirs)  # (B, S, 3)
        eye = torch.eye(3, dtype=rotmat.dtype, device=rotmat.device)
        pose_feature = (rotmat[:, 1:] - eye).reshape(b, -1)  # (B, 207)
        v = v + (pose_feature @ self.posedirs).view(b, -1, 3)
        joints24, rel = batch_rigid_transform(rotmat, joints_rest, self.parents, dtype=rotmat.dtype)  # rel (B,24,4,4)
        t = torch.einsum("sj,bjmn->bsmn", self.weights, rel)  # (B, S, 4, 4)
        v = torch.einsum("bsmn,bsn->bsm", t[..., :3, :3], v) + t[..., :3, 3]  # (B, S, 3) posed
        all_joints = torch.cat([joints24, v[:, self.picked], torch.einsum("js,bsc->bjc", self.extra, v)], dim=1)
        return SMPLJointsResult(joints=all_joints[:, self.joint_map])  # (B, 49, 3)


@dataclass(frozen=True)
class SMPLJointsResult:
    joints: torch.Tensor
    vertices: None = None


def training_smpl(root: str | os.PathLike, spec) -> nn.Module:
    """The body model the losses call: joints only unless the vertex loss is on."""
    smpl = SMPL(root, gender="neutral")
    return smpl if spec.shape > 0 else SMPLJoints(smpl)
