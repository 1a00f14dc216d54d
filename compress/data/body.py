"""A procedural human body in SMPL's file format: 6890 vertices, 24 joints on SMPL's tree, 10 shape directions.

The body is a set of closed tubes (torso, head, two arms, two legs, two feet), each a UV-sphere topology swept
along a polyline through the joints with elliptic cross-sections. Every joint lies on a tube axis with a ring
of vertices around it, so the joint regressors are ring means: joints follow shape exactly, and because a
ring's vertices share one skinning weight vector, the posed ring mean equals the posed joint.

Conventions (as SMPL): metres, y up, the body faces +z, the subject's left is +x, T-pose.
Shape: `shapedirs[..., k]` is the central finite difference of the generator for one unit of beta k (BETA_STEPS).
Gendered models: template = neutral template + shapedirs @ GENDER_BETAS[g] (same shape space, shifted mean).
Pose correctives: a small bulge at each joint's skinning seam growing with (1 - cos angle) = (3 - tr R) / 2,
which is linear in SMPL's pose feature (R - I).
LSP part labels (per vertex, our convention, used for both the ground-truth PNGs and rendering predictions):
LSP_PART_NAMES below; 0 is background in images.
"""
from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from compress import constants

log = logging.getLogger(__name__)

NUM_V = constants.NUM_VERTICES
PARENTS = np.array(constants.SMPL_PARENTS)
LSP_PART_NAMES = {1: "head", 2: "torso", 3: "left arm", 4: "right arm", 5: "left leg", 6: "right leg"}
PART_LABELS_FILE = "vertex_parts.npy"  # (6890,) int64 labels 1..6 in <root>/smpl/ (read by compress.eval.render)
MEAN_PARAMS_FILE = constants.SMPL_MEAN_PARAMS

# Generator parameters and how far one unit of each beta moves them.
SHAPE_NAMES = ("stature", "girth", "leg_length", "shoulder_width", "hip_width", "arm_length", "torso_length",
               "belly", "limb_thickness", "head_size")
BETA_STEPS = (0.05, 0.10, 0.05, 0.07, 0.07, 0.05, 0.05, 0.02, 0.10, 0.05)
GENDER_BETAS = {
    "neutral": np.zeros(10),
    "male": np.array([0.5, 0.3, 0.2, 0.8, -0.5, 0.2, 0.1, 0.0, 0.3, 0.1]),
    "female": np.array([-0.5, -0.3, -0.1, -0.8, 0.6, -0.2, -0.1, 0.0, -0.3, -0.1]),
}


@dataclass(frozen=True)
class BodyShape:
    stature: float = 1.0
    girth: float = 1.0
    leg_length: float = 1.0
    shoulder_width: float = 1.0
    hip_width: float = 1.0
    arm_length: float = 1.0
    torso_length: float = 1.0
    belly: float = 0.0  # metres of forward bulge of the abdomen
    limb_thickness: float = 1.0
    head_size: float = 1.0


# ----------------------------------------------------------------------------------------------- skeleton


def skeleton(p: BodyShape) -> np.ndarray:
    """T-pose joint positions (24, 3) for generator parameters p (before the stature scaling)."""
    j = np.zeros((24, 3))
    tl, hw, sw, ll, al = p.torso_length, p.hip_width, p.shoulder_width, p.leg_length, p.arm_length
    j[0] = (0, 0, 0)
    j[3] = (0, 0.11 * tl, -0.015)
    j[6] = (0, 0.24 * tl, -0.005)
    j[9] = (0, 0.30 * tl, 0.005)
    j[12] = (0, 0.50 * tl, -0.02)
    j[15] = (0, 0.50 * tl + 0.085, 0.01)
    for side, (hip, knee, ankle, foot, collar, shoulder, elbow, wrist, hand) in (
        (1, (1, 4, 7, 10, 13, 16, 18, 20, 22)), (-1, (2, 5, 8, 11, 14, 17, 19, 21, 23))
    ):
        j[hip] = (side * 0.085 * hw, -0.085, 0.0)
        j[knee] = j[hip] + (0.0, -0.40 * ll, 0.012)
        j[ankle] = j[knee] + (0.0, -0.40 * ll, -0.03)
        j[foot] = j[ankle] + (side * 0.012, -0.06, 0.125)
        j[collar] = (side * 0.075 * sw, 0.43 * tl, -0.01)
        j[shoulder] = (side * 0.175 * sw, 0.445 * tl, -0.02)
        j[elbow] = j[shoulder] + (side * 0.26 * al, 0.0, -0.01)
        j[wrist] = j[elbow] + (side * 0.25 * al, 0.0, 0.0)
        j[hand] = j[wrist] + (side * 0.085 * al, 0.0, 0.0)
    return j


# ----------------------------------------------------------------------------------------------- tubes


@dataclass(frozen=True)
class Tube:
    """A closed tube: poles at knots[0] and knots[-1], rings at knot positions and in between.

    knots (K, 3); radii (K, 2) = (a, b) semi-axes along (e2, e1) where e1 is `front` made orthogonal to the
    axis and e2 = axis x e1; rings[i] = number of ring steps in interval i; joints[i] = the SMPL joint that
    moves interval i; knot_joint[k] = SMPL joint whose regressor ring sits at knot k (or -1).
    """

    name: str
    knots: np.ndarray
    radii: np.ndarray
    rings: tuple[int, ...]
    segs: int
    front: tuple[float, float, float]
    joints: tuple[int, ...]
    knot_joint: tuple[int, ...]
    part: int | tuple[int, ...]  # LSP label, or one per interval
    phase: float = 0.0  # ring angle offset in steps (0.5 puts a vertex on the front line when segs % 4 == 2)


def _tubes(p: BodyShape) -> list[Tube]:
    j = skeleton(p)
    g, lt, hs = p.girth, p.limb_thickness, p.head_size
    tubes = []
    # Torso: crotch pole .. pelvis, spine1-3, shoulder level, neck base, neck, top pole (inside the head).
    y_sh = j[16, 1]
    torso_knots = [
        (0, -0.16, 0.0), j[0], j[3], j[6], j[9], (0, y_sh - 0.015, -0.01), (0, y_sh + 0.025, -0.015), j[12],
        (0, j[15, 1] + 0.02, 0.0),
    ]
    torso_r = [(0, 0), (0.165 * p.hip_width ** 0.5, 0.115), (0.145, 0.105), (0.155, 0.11), (0.165, 0.115),
               (0.17 * p.shoulder_width, 0.11), (0.11, 0.075), (0.058, 0.056), (0.05, 0.05)]
    torso_r = [(a * g if i < 6 else a, b * g if i < 6 else b) for i, (a, b) in enumerate(torso_r)]
    tubes.append(Tube("torso", np.array(torso_knots, float), np.array(torso_r, float),
                      rings=(10, 8, 8, 5, 8, 3, 3, 8), segs=36, front=(0, 0, 1),
                      joints=(0, 0, 3, 6, 9, 9, 9, 12), knot_joint=(-1, 0, 3, 6, 9, -1, -1, 12, -1), part=2))
    # Head: chin pole, head joint (jaw level), cranium, top pole.
    h = j[15]
    head_knots = [h + (0, -0.05 * hs, 0.0), h, h + (0, 0.06 * hs, 0.0), h + (0, 0.125 * hs, -0.005),
                  h + (0, 0.185 * hs, -0.01)]
    head_r = np.array([(0, 0), (0.062, 0.072), (0.08, 0.098), (0.078, 0.095), (0, 0)]) * hs
    tubes.append(Tube("head", np.array(head_knots), head_r, rings=(5, 8, 8, 5), segs=26, front=(0, 0, 1),
                      joints=(12, 15, 15, 15), knot_joint=(-1, 15, -1, -1, -1), part=1, phase=0.5))
    for side, name, (hip, knee, ankle, foot, collar, shoulder, elbow, wrist, hand), arm_part, leg_part in (
        (1, "left", (1, 4, 7, 10, 13, 16, 18, 20, 22), 3, 5), (-1, "right", (2, 5, 8, 11, 14, 17, 19, 21, 23), 4, 6)
    ):
        x = np.array([side, 0.0, 0.0])
        arm_knots = [j[collar] - 0.03 * x, j[collar], j[shoulder], 0.5 * (j[shoulder] + j[elbow]), j[elbow],
                     0.6 * j[elbow] + 0.4 * j[wrist], j[wrist], j[hand], j[hand] + 0.095 * p.arm_length * x]
        arm_r = np.array([(0, 0), (0.045, 0.045), (0.055, 0.056), (0.047, 0.048), (0.036, 0.04), (0.037, 0.042),
                          (0.023, 0.032), (0.016, 0.045), (0, 0)])
        arm_r[1:-1] *= np.array([lt * g ** 0.5] * 5 + [lt ** 0.5] * 2)[:, None]
        tubes.append(Tube(f"{name}_arm", np.array(arm_knots), arm_r, rings=(2, 7, 8, 8, 6, 6, 6, 7), segs=18,
                          front=(0, 0, 1), joints=(collar, collar, shoulder, shoulder, elbow, elbow, wrist, hand),
                          knot_joint=(-1, collar, shoulder, -1, elbow, -1, wrist, hand, -1),
                          part=(2, 2, arm_part, arm_part, arm_part, arm_part, arm_part, arm_part)))
        leg_knots = [j[hip] + (0, 0.08, 0), j[hip], 0.6 * j[hip] + 0.4 * j[knee], j[knee],
                     0.7 * j[knee] + 0.3 * j[ankle], j[ankle], j[ankle] + (0, -0.045, 0.0)]
        leg_r = np.array([(0, 0), (0.088, 0.09), (0.074, 0.078), (0.051, 0.055), (0.054, 0.058), (0.033, 0.036),
                          (0, 0)])
        leg_r[1:-1] *= np.array([lt * g, lt * g, lt * g ** 0.5, lt * g ** 0.5, lt])[:, None]
        tubes.append(Tube(f"{name}_leg", np.array(leg_knots), leg_r, rings=(6, 10, 10, 8, 8, 4), segs=22,
                          front=(0, 0, 1), joints=(0, hip, hip, knee, knee, ankle),
                          knot_joint=(-1, hip, -1, knee, -1, ankle, -1), part=leg_part))
        f = j[foot]
        foot_knots = [np.array([j[ankle][0], f[1] + 0.003, j[ankle][2] - 0.075]),
                      np.array([j[ankle][0], f[1] + 0.006, j[ankle][2] - 0.01]), f, f + (0.004 * side, -0.006, 0.085)]
        foot_r = np.array([(0, 0), (0.040, 0.036), (0.048, 0.028), (0, 0)]) * np.array([lt ** 0.5, 1.0])
        tubes.append(Tube(f"{name}_foot", np.array(foot_knots), foot_r, rings=(5, 9, 6), segs=16, front=(0, 1, 0),
                          joints=(ankle, ankle, foot), knot_joint=(-1, -1, foot, -1), part=leg_part))
    return tubes


@dataclass
class _TubeMesh:
    verts: np.ndarray  # (n, 3)
    faces: np.ndarray  # (m, 3) local indices
    center: np.ndarray  # (n, 3) axis point of each vertex's ring (for normals and bulges)
    arc: np.ndarray  # (n,) arc length along the axis
    interval: np.ndarray  # (n,) interval index (float position: i + u)
    phi: np.ndarray  # (n,) angle on the ring (nan for poles)
    ring_of_knot: dict = field(default_factory=dict)  # knot index -> local vertex ids of its ring


def _ring_params(t: Tube) -> list[tuple[int, float]]:
    """(interval, u) of every ring, in order; knot k (interior) is (k, 0.0)."""
    out = []
    for i, n in enumerate(t.rings):
        for s in range(n):
            if i == 0 and s == 0:
                continue  # the pole
            out.append((i, s / n))
    return out


def _frame(d: np.ndarray, front) -> tuple[np.ndarray, np.ndarray]:
    ref = np.asarray(front, float)
    e1 = ref - (ref @ d) * d
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(d, e1)


def _sweep(t: Tube) -> _TubeMesh:
    k = t.knots
    seg = np.diff(k, axis=0)
    seg_len = np.linalg.norm(seg, axis=1)
    dirs = seg / seg_len[:, None]
    cum = np.concatenate([[0.0], np.cumsum(seg_len)])
    params = _ring_params(t)
    n_last = len(t.rings) - 1
    verts, centers, arcs, ivals, phis = [k[0][None]], [k[0][None]], [0.0], [0.0], [np.nan]
    phi = 2 * np.pi * (np.arange(t.segs) + t.phase) / t.segs
    ring_of_knot = {}
    for r, (i, u) in enumerate(params):
        c = k[i] + u * seg[i]
        if u == 0.0 and i > 0:
            d = dirs[i - 1] + dirs[i]
            d /= np.linalg.norm(d)
            ring_of_knot[i] = 1 + r * t.segs + np.arange(t.segs)
        else:
            d = dirs[i]
        a, b = (1 - u) * t.radii[i] + u * t.radii[i + 1]
        if i == 0:  # elliptic cap from the pole
            a, b = t.radii[1] * np.sqrt(max(0.0, 1 - (1 - u) ** 2))
        elif i == n_last:
            a, b = t.radii[i] * np.sqrt(max(0.0, 1 - u ** 2))
        e1, e2 = _frame(d, t.front)
        ring = c + a * np.cos(phi)[:, None] * e2 + b * np.sin(phi)[:, None] * e1
        verts.append(ring)
        centers.append(np.repeat(c[None], t.segs, 0))
        arcs += [cum[i] + u * seg_len[i]] * t.segs
        ivals += [i + u] * t.segs
        phis.append(phi)
    verts.append(k[-1][None])
    centers.append(k[-1][None])
    arcs.append(cum[-1])
    ivals.append(float(len(t.rings)))
    phis.append([np.nan])
    n_rings = len(params)
    s = t.segs
    faces = []
    nxt = (np.arange(s) + 1) % s
    first, last_pole = 0, 1 + n_rings * s
    faces.append(np.stack([np.full(s, first), 1 + nxt, 1 + np.arange(s)], 1))
    for r in range(n_rings - 1):
        a0, a1 = 1 + r * s + np.arange(s), 1 + r * s + nxt
        b0, b1 = a0 + s, a1 + s
        faces.append(np.stack([a0, a1, b1], 1))
        faces.append(np.stack([a0, b1, b0], 1))
    base = 1 + (n_rings - 1) * s
    faces.append(np.stack([np.full(s, last_pole), base + np.arange(s), base + nxt], 1))
    verts = np.concatenate(verts)
    faces = np.concatenate(faces)
    # Orient outwards: positive signed volume.
    v0, v1, v2 = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    if np.einsum("ij,ij->i", v0, np.cross(v1, v2)).sum() < 0:
        faces = faces[:, ::-1].copy()
    return _TubeMesh(verts, faces, np.concatenate(centers), np.array(arcs), np.array(ivals),
                     np.concatenate([np.atleast_1d(x) for x in phis]).astype(float), ring_of_knot)


def _generate(p: BodyShape) -> tuple[list[Tube], list[_TubeMesh], np.ndarray]:
    """Tubes, their meshes (local features added), and the stacked vertices (N, 3) scaled by stature."""
    tubes = _tubes(p)
    meshes = [_sweep(t) for t in tubes]
    j = skeleton(p)
    for t, m in zip(tubes, meshes):
        if t.name == "head":  # nose: a bump at the front, between the head joint ring and the eyes
            h = j[15]
            front = np.clip(np.sin(np.nan_to_num(m.phi, nan=0.0)), 0, None) ** 8
            bump = np.exp(-(((m.verts[:, 1] - h[1] - 0.045 * p.head_size) / 0.017) ** 2))
            m.verts[:, 2] += 0.022 * p.head_size * front * bump
        if t.name == "torso":  # belly: forward bulge of the abdomen
            front = np.clip(np.sin(np.nan_to_num(m.phi, nan=0.0)), 0, None) ** 2
            bump = np.exp(-(((m.verts[:, 1] - 0.08 * p.torso_length) / 0.09) ** 2))
            m.verts[:, 2] += p.belly * front * bump
    verts = np.concatenate([m.verts for m in meshes]) * p.stature
    return tubes, meshes, verts


# ----------------------------------------------------------------------------------------------- assembly


def _smooth_step(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _axial_weights(t: Tube, m: _TubeMesh) -> np.ndarray:
    """(n, 24) weights: each interval's joint, blended with a smoothstep across knots where the joint changes."""
    n = len(m.arc)
    knots_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(t.knots, axis=0), axis=1))])
    owners, steps = [t.joints[0]], [np.ones(n)]
    for i in range(1, len(t.joints)):
        if t.joints[i] != t.joints[i - 1]:
            half = max(0.018, 0.45 * float(np.mean(t.radii[i])))
            steps.append(_smooth_step((m.arc - (knots_arc[i] - half)) / (2 * half)))
            owners.append(t.joints[i])
    steps.append(np.zeros(n))
    w = np.zeros((n, 24))
    for k, jn in enumerate(owners):  # telescoping differences: a partition of unity
        w[:, jn] += np.clip(steps[k] - steps[k + 1], 0.0, None)
    return w / w.sum(1, keepdims=True)


def _torso_lateral(w: np.ndarray, v: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Hand the torso's shoulder corners to the collars and its hip corners to the hips (smooth junctions)."""
    ax = np.abs(v[:, 0])
    y_sh = j[16, 1]
    a = _smooth_step((ax - 0.085) / 0.07) * _smooth_step((v[:, 1] - (y_sh - 0.10)) / 0.06)
    b = _smooth_step((ax - 0.04) / 0.07) * _smooth_step((-0.03 - v[:, 1]) / 0.06) * 0.6
    for mask_side, collar, hip in ((v[:, 0] > 0, 13, 1), (v[:, 0] <= 0, 14, 2)):
        for amount, target in ((a, collar), (b, hip)):
            amt = amount * mask_side
            w *= (1 - amt)[:, None]
            w[:, target] += amt
    return w


@dataclass(frozen=True)
class _Topology:
    faces: np.ndarray  # (F, 3) in final vertex order
    perm: np.ndarray  # new index -> generator index
    weights: np.ndarray  # (6890, 24)
    labels: np.ndarray  # (6890,) LSP parts
    skin_part: np.ndarray  # (6890,) argmax skinning joint (image colours)
    front: np.ndarray  # (6890,) bool, outward direction has a forward component at rest
    j_regressor: sp.csc_matrix  # (24, 6890)
    j_extra: np.ndarray  # (9, 6890)
    j_h36m: np.ndarray  # (17, 6890)
    posedirs: np.ndarray  # (6890, 3, 207)


def _ring_weights(ids: np.ndarray, n: int) -> np.ndarray:
    row = np.zeros(n)
    row[ids] = 1.0 / len(ids)
    return row


def _nearest_ring(t: Tube, m: _TubeMesh, offset: int, y: float | None = None, arc: float | None = None):
    """Global generator ids of the ring whose centre height (or arc length) is closest to the target."""
    ring_starts = np.arange(1, len(m.arc) - 1, t.segs)
    key = m.center[ring_starts, 1] if y is not None else m.arc[ring_starts]
    r = int(np.argmin(np.abs(key - (y if y is not None else arc))))
    return offset + ring_starts[r] + np.arange(t.segs)


def _build_topology(p0: BodyShape) -> _Topology:
    tubes, meshes, verts = _generate(p0)
    j = skeleton(p0) * p0.stature
    n = len(verts)
    assert n == NUM_V, f"body has {n} vertices, SMPL needs {NUM_V}"
    offsets = np.cumsum([0] + [len(m.verts) for m in meshes])
    faces = np.concatenate([m.faces + o for m, o in zip(meshes, offsets)])
    by_name = {t.name: (t, m, o) for t, m, o in zip(tubes, meshes, offsets)}

    weights = np.zeros((n, 24))
    labels = np.zeros(n, dtype=np.int64)
    normals = np.zeros((n, 3))
    for t, m, o in zip(tubes, meshes, offsets):
        w = _axial_weights(t, m)
        if t.name == "torso":
            w = _torso_lateral(w, m.verts, skeleton(p0))
        weights[o:o + len(m.verts)] = w
        parts = np.atleast_1d(t.part)
        ival = np.minimum(m.interval.astype(int), len(t.rings) - 1)
        labels[o:o + len(m.verts)] = parts[ival] if len(parts) > 1 else parts[0]
        rad = m.verts - m.center
        norm = np.linalg.norm(rad, axis=1, keepdims=True)
        normals[o:o + len(m.verts)] = np.where(norm > 1e-9, rad / np.maximum(norm, 1e-9), 0.0)
    # The neck belongs to the head part (above the shoulder line of the torso).
    t_torso, m_torso, o_torso = by_name["torso"]
    neck = o_torso + np.nonzero(m_torso.verts[:, 1] > skeleton(p0)[16, 1] + 0.035)[0]
    labels[neck] = 1

    # Joint regressor: the ring at each joint's knot.
    jreg = np.zeros((24, n))
    for t, m, o in zip(tubes, meshes, offsets):
        for kidx, jid in enumerate(t.knot_joint):
            if jid >= 0:
                jreg[jid] = _ring_weights(o + m.ring_of_knot[kidx], n)
    assert np.allclose(jreg.sum(1), 1.0), "every SMPL joint needs a regressor ring"

    # SPIN's extra joints (R hip, L hip, Neck LSP, Top of Head LSP, Pelvis MPII, Thorax MPII, Spine H36M,
    # Jaw H36M, Head H36M).
    jsk = skeleton(p0)
    extra = np.zeros((9, n))
    for row, leg, hip in ((0, "right_leg", 2), (1, "left_leg", 1)):
        t, m, o = by_name[leg]
        extra[row] = _ring_weights(_nearest_ring(t, m, o, y=jsk[hip, 1] - 0.03), n)
    t, m, o = by_name["torso"]
    extra[2] = _ring_weights(_nearest_ring(t, m, o, y=jsk[12, 1] + 0.035), n)
    extra[5] = _ring_weights(_nearest_ring(t, m, o, y=jsk[16, 1]), n)
    extra[6] = _ring_weights(_nearest_ring(t, m, o, y=0.5 * (jsk[0, 1] + jsk[16, 1])), n)
    extra[4] = 0.5 * (jreg[1] + jreg[2])
    th, mh, oh = by_name["head"]
    top_ring = _nearest_ring(th, mh, oh, arc=mh.arc[-2])
    extra[3] = 0.5 * _ring_weights(np.array([oh + len(mh.verts) - 1]), n) + 0.5 * _ring_weights(top_ring, n)
    jaw_ring = _nearest_ring(th, mh, oh, y=jsk[15, 1] + 0.02)
    jaw_front = jaw_ring[np.sin(mh.phi[jaw_ring - oh]) > 0.5]
    extra[7] = _ring_weights(jaw_front, n)
    extra[8] = _ring_weights(_nearest_ring(th, mh, oh, y=jsk[15, 1] + 0.12), n)

    # H36M rows in the order SPIN's selectors expect (H36M_TO_J17 vs J24_TO_J17): each row regresses exactly
    # the point the matching J24 joint uses, so GT (J24) and prediction (H36M) paths agree on the same mesh.
    # Rows 1-3 are the subject's LEFT leg and 4-6 the right leg, 11-13 the left arm, 14-16 the right arm.
    h36m = np.stack([
        extra[4], extra[1], jreg[4], jreg[7], extra[0], jreg[5], jreg[8], extra[6], extra[2], extra[7], extra[8],
        jreg[16], jreg[18], jreg[20], jreg[17], jreg[19], jreg[21],
    ])

    # Pose correctives: outward bulge at each joint's seam, linear in diag(R - I).
    posedirs = np.zeros((n, 3, 207))
    for jid in range(1, 24):
        seam = 4 * weights[:, jid] * weights[:, PARENTS[jid]]
        c = 0.012 if jid in (1, 2, 4, 5, 16, 17, 18, 19) else 0.006
        col = -c * seam[:, None] * normals / 4.0  # (3 - tr R) / 4 = (1 - cos) / 2
        for d in (0, 4, 8):
            posedirs[:, :, 9 * (jid - 1) + d] = col

    perm = _place_landmarks(by_name, verts, skeleton(p0) * p0.stature, n)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    return _Topology(
        faces=inv[faces].astype(np.int64),
        perm=perm,
        weights=weights[perm],
        labels=labels[perm],
        skin_part=weights[perm].argmax(1),
        front=(normals[:, 2] > 0.25)[perm],
        j_regressor=sp.csc_matrix(jreg[:, perm]),
        j_extra=extra[:, perm],
        j_h36m=h36m[:, perm],
        posedirs=posedirs[perm],
    )


def _place_landmarks(by_name: dict, verts: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """A vertex order in which smplx's fixed landmark ids (nose, eyes, ears, toes, heels, finger tips) sit
    at the right anatomical spots. Returns perm: new index -> generator index."""
    targets: dict[int, int] = {}

    def pick(tube: str, point, mask=None) -> int:
        t, m, o = by_name[tube]
        ids = o + np.arange(len(m.verts))
        if mask is not None:
            ids = ids[mask(verts[ids])]
        d = np.linalg.norm(verts[ids] - np.asarray(point), axis=1)
        for k in np.argsort(d):
            if int(ids[k]) not in targets.values():
                return int(ids[k])
        raise AssertionError("no free vertex for a landmark")

    h = j[15]
    t, m, o = by_name["head"]
    hv = verts[o:o + len(m.verts)]
    band = np.abs(hv[:, 1] - (h[1] + 0.045)) < 0.02
    vid = constants.SMPL_EXTRA_VERTEX_IDS
    targets[vid["nose"]] = o + int(np.nonzero(band)[0][np.argmax(hv[band, 2])])
    front = lambda v: v[:, 2] > h[2]  # noqa: E731
    targets[vid["leye"]] = pick("head", (0.033, h[1] + 0.085, h[2] + 0.12), front)
    targets[vid["reye"]] = pick("head", (-0.033, h[1] + 0.085, h[2] + 0.12), front)
    targets[vid["lear"]] = pick("head", (0.11, h[1] + 0.06, h[2]))
    targets[vid["rear"]] = pick("head", (-0.11, h[1] + 0.06, h[2]))
    for side, s in (("left", 1), ("right", -1)):
        ft, fm, fo = by_name[f"{side}_foot"]
        toe, heel = ft.knots[-1], ft.knots[0]
        pre = "L" if s > 0 else "R"
        targets[vid[f"{pre}BigToe"]] = pick(f"{side}_foot", toe + (-0.02 * s, -0.01, -0.01))
        targets[vid[f"{pre}SmallToe"]] = pick(f"{side}_foot", toe + (0.035 * s, -0.01, -0.03))
        targets[vid[f"{pre}Heel"]] = pick(f"{side}_foot", heel + (0, -0.015, 0.005))
        at, am, ao = by_name[f"{side}_arm"]
        tip, hand = at.knots[-1], at.knots[-2]
        x = np.array([s, 0.0, 0.0])
        fingers = {"thumb": hand + 0.03 * x + (0, 0, 0.05), "index": tip - 0.01 * x + (0, 0, 0.025),
                   "middle": tip, "ring": tip - 0.01 * x + (0, 0, -0.02), "pinky": tip - 0.025 * x + (0, 0, -0.04)}
        for name, point in fingers.items():
            targets[_FINGER_IDS[side[0] + name]] = pick(f"{side}_arm", point)
    order = np.arange(n)
    pos = np.arange(n)  # generator vertex -> current position
    for tid, gv in targets.items():
        cur = pos[gv]
        other = order[tid]
        order[tid], order[cur] = gv, other
        pos[gv], pos[other] = tid, cur
    return order


# smplx's default SMPL finger-tip vertex ids (smplx.vertex_ids 'smplh'); SPIN's 49 joints do not use them.
_FINGER_IDS = {"rthumb": 6191, "rindex": 5782, "rmiddle": 5905, "rring": 6016, "rpinky": 6133,
               "lthumb": 2746, "lindex": 2319, "lmiddle": 2445, "lring": 2556, "lpinky": 2673}


# ----------------------------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class BodyModel:
    """Everything the data root needs, as numpy arrays (one gender)."""

    smpl: dict  # SMPL's keys (numpy / scipy.sparse)
    j_regressor_extra: np.ndarray  # (9, 6890)
    j_regressor_h36m: np.ndarray  # (17, 6890)
    part_labels: np.ndarray  # (6890,) LSP labels 1..6
    skin_part: np.ndarray  # (6890,) argmax skinning joint 0..23 (for per-part image colours)
    front: np.ndarray  # (6890,) bool: the vertex faces forward (+z) at rest (face vs hair, chest vs back)


def _vertices(p: BodyShape, perm: np.ndarray) -> np.ndarray:
    return _generate(p)[2][perm]


def _shape_at(betas: np.ndarray) -> BodyShape:
    base = BodyShape()
    return replace(base, **{name: getattr(base, name) + float(b) * step
                            for name, b, step in zip(SHAPE_NAMES, betas, BETA_STEPS)})


_CACHE: dict = {}


def _neutral_basis() -> tuple[_Topology, np.ndarray, np.ndarray]:
    """Topology, neutral template (6890, 3) and shapedirs (6890, 3, 10), computed once per process."""
    if "basis" not in _CACHE:
        topo = _build_topology(BodyShape())
        v0 = _vertices(BodyShape(), topo.perm)
        shapedirs = np.zeros((NUM_V, 3, 10))
        for k in range(10):
            e = np.zeros(10)
            e[k] = 1.0
            shapedirs[:, :, k] = (_vertices(_shape_at(e), topo.perm) - _vertices(_shape_at(-e), topo.perm)) / 2
        _CACHE["basis"] = (topo, v0, shapedirs)
    return _CACHE["basis"]


def build_body(gender: str = "neutral") -> BodyModel:
    """The procedural body of `gender` (neutral, male, female) in SMPL's layout. Deterministic; cached."""
    if gender not in GENDER_BETAS:
        raise ValueError(f"unknown gender {gender!r}; choose one of {', '.join(GENDER_BETAS)}")
    if gender in _CACHE:
        return _CACHE[gender]
    topo, v0, shapedirs = _neutral_basis()
    v_template = v0 + shapedirs @ GENDER_BETAS[gender]
    j = topo.j_regressor @ v_template
    kintree = np.stack([np.array([4294967295] + constants.SMPL_PARENTS[1:], dtype=np.int64), np.arange(24)])
    smpl = {
        "v_template": v_template,
        "f": topo.faces.astype(np.uint32),
        "shapedirs": shapedirs,
        "posedirs": topo.posedirs,
        "weights": topo.weights,
        "J_regressor": topo.j_regressor,
        "kintree_table": kintree,
        "J": np.asarray(j),
        "bs_type": "lrotmin",
        "bs_style": "lbs",
    }
    body = BodyModel(smpl, topo.j_extra, topo.j_h36m, topo.labels, topo.skin_part, topo.front)
    _CACHE[gender] = body
    return body


def mean_params(body_pose: np.ndarray | None = None, shape: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """SPIN's smpl_mean_params layout: pose (144,) 6D (global orient 180 deg about x, then the 23 body rotations),
    shape (10,), cam (3,) = [0.9, 0, 0]; float32. Default body pose: at rest (T-pose); default shape: zeros.

    SPIN's file holds the mean of its training fits; the synthetic root passes the mean of its own training poses
    (`mean_rotation`) so a model starts, as SPIN's does, from the pose its training data is centred on.
    """
    rot = np.tile(np.eye(3), (24, 1, 1))
    rot[0] = np.diag([1.0, -1.0, -1.0])
    if body_pose is not None:
        rot[1:] = body_pose
    six = rot[:, :, :2].reshape(-1)  # the first two columns, row-major (compress.geometry.rotmat_to_rot6d)
    shape = np.zeros(10) if shape is None else np.asarray(shape)
    return {"pose": six.astype(np.float32), "shape": shape.astype(np.float32),
            "cam": np.array([0.9, 0, 0], np.float32)}


def mean_rotation(rotmats: np.ndarray) -> np.ndarray:
    """Chordal L2 mean of rotations (N, ..., 3, 3) over N: the nearest rotation to their arithmetic mean."""
    u, _, vt = np.linalg.svd(rotmats.mean(0))
    d = np.sign(np.linalg.det(u @ vt))  # keep det +1
    u[..., :, -1] *= d[..., None]
    return u @ vt


def write_body_files(root: str | Path) -> None:
    """Write smpl/SMPL_{NEUTRAL,MALE,FEMALE}.{npz,pkl}, the regressors, part labels and mean params."""
    root = Path(root)
    (root / "smpl").mkdir(parents=True, exist_ok=True)
    for gender in ("neutral", "male", "female"):
        body = build_body(gender)
        d = body.smpl
        stem = root / "smpl" / f"SMPL_{gender.upper()}"
        arrays = {k: (np.asarray(v.todense()) if sp.issparse(v) else np.asarray(v)) for k, v in d.items()}
        arrays["posedirs"] = arrays["posedirs"].astype(np.float32)  # mostly zeros; keeps the files small
        np.savez_compressed(stem.with_suffix(".npz"), **arrays)
        pkl = dict(d)
        pkl["posedirs"] = d["posedirs"].astype(np.float32)
        with open(stem.with_suffix(".pkl"), "wb") as f:
            pickle.dump(pkl, f, protocol=2)
    body = build_body("neutral")
    np.save(root / "J_regressor_extra.npy", body.j_regressor_extra.astype(np.float64))
    np.save(root / "J_regressor_h36m.npy", np.asfortranarray(body.j_regressor_h36m.astype(np.float64)))
    np.save(root / "smpl" / PART_LABELS_FILE, body.part_labels.astype(np.int64))
    np.savez(root / MEAN_PARAMS_FILE, **mean_params())
