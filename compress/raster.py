"""A batched triangle-mesh rasteriser in pure torch (CPU and CUDA; no custom extensions).

Conventions
- Vertices are in pixel coordinates: x to the right, y down, z = positive depth (nearer = smaller z).
- Pixel (row i, column j) covers the square [j, j+1) x [i, i+1); its centre (j + 0.5, i + 0.5) is the sample point.
  So an image of width W spans x in [0, W], and a camera centre at (W/2, H/2) is the middle of the image.
- A pixel belongs to a triangle when its centre is inside or on an edge (edge functions, both windings).
- Z-buffer: the fragment with the smallest depth wins; exact ties go to the smaller face index.
- No anti-aliasing, no clipping: faces with any vertex at depth <= `near` are dropped (whole-face culling).
- Barycentrics are screen-space (affine) by default; `perspective_correct=True` weights them by 1/z, which is
  exact for meshes projected with a pinhole camera. Depth is interpolated consistently with the choice.

How: per-face pixel bounding boxes are expanded into candidate (face, pixel) pairs in chunks (bounded memory),
edge functions test the pixel centres, and the z-buffer is resolved with one `scatter_reduce(amin)` on an int64
key = (float32 depth bits << 32) | face index. Positive float32 values order like their bit patterns, so the key
orders by depth first and face index second, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_NO_FACE = torch.iinfo(torch.int64).max


@dataclass(frozen=True)
class Fragments:
    """Per-pixel rasterisation result. face_index is -1 on the background (bary and depth are 0 there)."""

    face_index: torch.Tensor  # (B, H, W) int64
    bary: torch.Tensor  # (B, H, W, 3)
    depth: torch.Tensor  # (B, H, W)

    @property
    def mask(self) -> torch.Tensor:
        """(B, H, W) bool: pixels covered by the mesh."""
        return self.face_index >= 0


def project_perspective(
    points: torch.Tensor,
    translation: torch.Tensor,
    *,
    focal_length: float | torch.Tensor,
    center: torch.Tensor,
) -> torch.Tensor:
    """Pinhole camera with R = I: (B, N, 3) points + t (B, 3) -> (B, N, 3) = (x_px, y_px, depth).

    `center` is (2,) or (B, 2) in pixels; with this module's pixel convention, center = (W/2, H/2) puts the
    optical axis in the middle of the image (SPIN: img_res / 2).
    """
    p = points + translation[:, None, :]  # (B, N, 3) camera frame
    z = p[..., 2:3]
    f = torch.as_tensor(focal_length, dtype=points.dtype, device=points.device).reshape(-1, 1, 1)
    c = torch.as_tensor(center, dtype=points.dtype, device=points.device).reshape(-1, 1, 2)
    xy = f * p[..., :2] / z + c
    return torch.cat([xy, z], dim=-1)


def rasterize(
    verts: torch.Tensor,
    faces: torch.Tensor,
    height: int,
    width: int,
    *,
    near: float = 0.0,
    perspective_correct: bool = False,
    chunk_size: int = 1 << 20,
) -> Fragments:
    """Rasterise B meshes sharing one topology: verts (B, V, 3) in pixels (see module doc), faces (F, 3) long.

    `chunk_size` bounds the number of candidate (face, pixel) pairs processed at once.
    """
    if verts.ndim != 3 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be (B, V, 3), got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be (F, 3), got {tuple(faces.shape)}")
    if near < 0:
        raise ValueError(f"near must be >= 0 (depths are positive), got {near}")
    b, device = verts.shape[0], verts.device
    dtype = verts.dtype if verts.dtype in (torch.float32, torch.float64) else torch.float32
    faces = faces.to(device=device, dtype=torch.long)
    v = verts.to(dtype)
    tri = torch.index_select(v, 1, faces.reshape(-1)).reshape(-1, 3, 3)  # (B*F, 3 corners, xyz)
    v0, v1, v2 = tri.unbind(1)  # (B*F, 3) each
    n_faces = faces.shape[0]

    # Candidate pixel box per face: column j is sampled at x = j + 0.5.
    lo = torch.ceil(torch.minimum(torch.minimum(v0[:, :2], v1[:, :2]), v2[:, :2]) - 0.5).clamp_min(0)  # (B*F, 2)
    hi = torch.floor(torch.maximum(torch.maximum(v0[:, :2], v1[:, :2]), v2[:, :2]) - 0.5)
    hi = torch.minimum(hi, torch.tensor([width - 1, height - 1], dtype=dtype, device=device))
    ext = (hi - lo + 1).clamp_min(0).long()  # (B*F, 2) number of columns, rows
    zmin = torch.minimum(torch.minimum(v0[:, 2], v1[:, 2]), v2[:, 2])
    area = _cross2(v1 - v0, v2 - v0)  # (B*F,) twice the signed area
    ok = (zmin > near) & (area != 0) & torch.isfinite(area) & (ext[:, 0] > 0) & (ext[:, 1] > 0)
    # Work on the faces that can cover a pixel centre only ("rows"); live[row] = flat face id b*F + f.
    live = ok.nonzero().squeeze(1)
    lo, ext = lo[live], ext[live]
    coef = _face_planes(v0[live], v1[live], v2[live], lo + 0.5, perspective_correct)  # (R, 13)
    batch_of_row = live // n_faces

    zbuf = torch.full((b * height * width,), _NO_FACE, dtype=torch.int64, device=device)
    # Small faces (almost all of them on a body mesh) use dense kx x ky pixel grids: no per-pixel gathers.
    sizes = (1, 2, 4, 8, 16)
    bucket = torch.bucketize(ext, torch.tensor(sizes, device=device))  # (R, 2): index of the smallest k >= ext
    code = bucket[:, 0] * (len(sizes) + 1) + bucket[:, 1]  # faces larger than 16 get an index of len(sizes)
    order = torch.argsort(code, stable=True)
    groups = torch.split(order, torch.bincount(code, minlength=(len(sizes) + 1) ** 2).tolist())
    for ix, kx in enumerate(sizes):
        for iy, ky in enumerate(sizes):
            rows = groups[ix * (len(sizes) + 1) + iy]
            step = max(1, chunk_size // (kx * ky))
            for s in range(0, rows.numel(), step):
                _raster_grid(zbuf, rows[s:s + step], kx, ky, coef, lo, ext, batch_of_row, height, width,
                             perspective_correct)
    # Larger faces (close-ups, big quads): ragged expansion of their boxes, in chunks of ~chunk_size pixels.
    big = (ext.amax(dim=1) > sizes[-1]).nonzero().squeeze(1)
    if big.numel():
        counts = ext[big, 0] * ext[big, 1]
        ends = counts.cumsum(0)
        start = 0
        while start < big.numel():
            base = ends[start - 1] if start else ends.new_zeros(())
            stop = max(int(torch.searchsorted(ends, base + chunk_size, right=True)), start + 1)
            _raster_boxes(zbuf, big[start:stop], counts[start:stop], coef, lo, ext, batch_of_row, height, width,
                          perspective_correct)
            start = stop

    covered = zbuf != _NO_FACE  # (B*H*W,)
    face_index = torch.full_like(zbuf, -1)
    bary = torch.zeros(b * height * width, 3, dtype=dtype, device=device)
    depth = torch.zeros(b * height * width, dtype=dtype, device=device)
    pix = covered.nonzero().squeeze(1)
    if pix.numel():
        row = zbuf[pix] & 0xFFFFFFFF
        face_index[pix] = live[row] % n_faces
        # Barycentrics of the winners only, recomputed from the same planes (cheaper than carrying them along).
        rem = pix % (height * width)
        dx = rem % width - lo[row, 0].long()
        dy = rem // width - lo[row, 1].long()
        bary[pix], depth[pix] = _evaluate(coef[row], dx.to(dtype), dy.to(dtype), perspective_correct)
    return Fragments(
        face_index=face_index.reshape(b, height, width),
        bary=bary.reshape(b, height, width, 3),
        depth=depth.reshape(b, height, width),
    )


def _face_planes(v0, v1, v2, origin: torch.Tensor, perspective_correct: bool) -> torch.Tensor:
    """Per face (vertices v0, v1, v2 (N, 3)) the three edge functions as planes in pixel offsets from `origin`
    (N, 2), the inverse doubled area and the per-vertex depth (or 1/depth):
    (N, 13) = [A0 A1 A2, B0 B1 B2, C0 C1 C2, 1/area, q0 q1 q2].

    Edge k is the one opposite vertex k, so E_k / area is the barycentric weight of vertex k. Offsets from a
    nearby origin keep the sums small, so centres lying exactly on an edge are decided exactly.
    """
    cols = [], [], []
    for a, b in ((v1, v2), (v2, v0), (v0, v1)):  # edge k runs from vertex k+1 to vertex k+2
        ex, ey = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
        cols[0].append(-ey)  # d/dx
        cols[1].append(ex)  # d/dy
        cols[2].append(ex * (origin[:, 1] - a[:, 1]) - ey * (origin[:, 0] - a[:, 0]))  # value at the origin
    inv_area = 1.0 / _cross2(v1 - v0, v2 - v0)  # 1 / twice the signed area (degenerate faces are culled)
    z = [v0[:, 2], v1[:, 2], v2[:, 2]]
    zq = [1.0 / t for t in z] if perspective_correct else z
    return torch.stack([*cols[0], *cols[1], *cols[2], inv_area, *zq], dim=1)


def _cross2(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


def _evaluate(coef: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, perspective_correct: bool):
    """Barycentrics (..., 3) and depth (...) at pixel offsets dx, dy (...) for planes coef (..., 13)."""
    w = (coef[..., 0:3] * dx[..., None] + coef[..., 3:6] * dy[..., None] + coef[..., 6:9]) * coef[..., 9:10]
    zq = (w * coef[..., 10:13]).sum(dim=-1)
    if perspective_correct:  # coef holds 1/z: bary_persp = (w_k / z_k) / sum_j (w_j / z_j), depth = 1 / sum
        depth = 1.0 / zq
        return w * coef[..., 10:13] * depth[..., None], depth
    return w, zq


def _write(zbuf, inside, depth, rows, pix, per_row: int = 1) -> None:
    # float32 bits of a positive depth order like the depth; the row (ordered like b*F + f) breaks exact ties.
    idx = inside.nonzero().squeeze(1)
    bits = depth[idx].float().clamp_min(1e-30).view(torch.int32).to(torch.int64)
    key = (bits << 32) | rows[idx // per_row]
    zbuf.scatter_reduce_(0, pix[idx], key, reduce="amin", include_self=True)


def _raster_grid(zbuf, rows, kx, ky, coef, lo, ext, batch_of_row, height, width, perspective_correct) -> None:
    """Faces `rows` whose pixel box fits in kx x ky: test a dense (n, ky, kx) candidate grid.

    Every plane is separable, value(y, x) = (C + B*y) + A*x, so each costs one broadcast add per candidate.
    Cells outside a face's box get -inf in an edge term, which folds the box test into the inside test.
    """
    dev, dtype = zbuf.device, coef.dtype
    c = coef[rows]  # (n, 13)
    e = ext[rows]
    sign = c[:, 9:10].sign()  # orient every edge function so that inside = all >= 0 (either winding)
    gx = torch.arange(kx, device=dev, dtype=dtype)
    gy = torch.arange(ky, device=dev, dtype=dtype)
    out_x = torch.where(gx[None, :] < e[:, :1], 0.0, float("-inf")).to(dtype)  # (n, kx)
    out_y = torch.where(gy[None, :] < e[:, 1:], 0.0, float("-inf")).to(dtype)  # (n, ky)
    inside = None
    for k in range(3):
        ax = (c[:, k:k + 1] * sign) * gx + out_x  # (n, kx)
        by = (c[:, 3 + k:4 + k] * sign) * gy + c[:, 6 + k:7 + k] * sign + out_y  # (n, ky)
        ok = (by[:, :, None] + ax[:, None, :]) >= 0  # (n, ky, kx)
        inside = ok if inside is None else inside & ok
    # Depth (or 1/depth) is affine too: q = sum_k q_k * E_k / area.
    qa = c[:, 10:13] * c[:, 9:10]  # (n, 3)
    zx = (c[:, 0:3] * qa).sum(-1, keepdim=True) * gx  # (n, kx)
    zy = (c[:, 3:6] * qa).sum(-1, keepdim=True) * gy + (c[:, 6:9] * qa).sum(-1, keepdim=True)  # (n, ky)
    q = zy[:, :, None] + zx[:, None, :]  # (n, ky, kx)
    depth = 1.0 / q if perspective_correct else q
    l = lo[rows].long()
    col = (l[:, :1] + torch.arange(kx, device=dev)).clamp_max(width - 1)  # (n, kx); clamped cells are outside
    row = (l[:, 1:] + torch.arange(ky, device=dev)).clamp_max(height - 1)  # (n, ky)
    base = (batch_of_row[rows][:, None] * height + row) * width  # (n, ky)
    pix = base[:, :, None] + col[:, None, :]  # (n, ky, kx)
    _write(zbuf, inside.reshape(-1), depth.reshape(-1), rows, pix.reshape(-1), per_row=kx * ky)


def _raster_boxes(zbuf, rows, counts, coef, lo, ext, batch_of_row, height, width, perspective_correct) -> None:
    """Faces `rows` with large boxes: expand every box into its pixels (ragged) and test them."""
    dev, dtype = zbuf.device, coef.dtype
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=dev), counts, output_size=total)
    local = torch.arange(total, device=dev) - (counts.cumsum(0) - counts)[owner]  # index inside the face's box
    r = rows[owner]
    nx = ext[r, 0]
    dx, dy = local % nx, local // nx
    w, z = _evaluate(coef[r], dx.to(dtype), dy.to(dtype), perspective_correct)
    inside = (w >= 0).all(dim=-1)
    l = lo[r].long()
    pix = (batch_of_row[r] * height + l[:, 1] + dy) * width + l[:, 0] + dx
    _write(zbuf, inside, z, r, pix)
