"""Drawing the synthetic images: posed meshes with per-part colours and Lambert shading, over textured
backgrounds (compress.data.synthetic decides what to draw)."""
from __future__ import annotations

import math

import numpy as np
import torch

from compress.data import body as body_mod
from compress.raster import rasterize

# Image colours per skinning joint: the left side warm, the right side cool, so left/right is visible.
_PALETTE = np.array([
    (95, 70, 165), (205, 40, 120), (35, 145, 70), (75, 125, 185), (240, 120, 185), (110, 215, 95),
    (65, 150, 205), (150, 25, 70), (25, 85, 45), (85, 180, 220), (255, 175, 205), (185, 250, 155),
    (225, 195, 160), (200, 90, 80), (85, 195, 95), (230, 200, 165), (230, 65, 45), (45, 95, 230),
    (250, 150, 35), (45, 200, 230), (250, 215, 70), (120, 235, 200), (250, 235, 130), (175, 245, 225),
], dtype=np.float32) / 255.0
_HAIR = np.array((60, 40, 30), np.float32) / 255.0
_BACK_DARKEN = 0.7  # torso back is darker than its front: the body's facing direction is visible


class Renderer:
    """Renders posed meshes of one topology with per-face colours and Lambert shading."""

    def __init__(self, faces: np.ndarray, body: body_mod.BodyModel):
        self._rasterize = rasterize
        self.faces = torch.as_tensor(faces.astype(np.int64))
        self._soup_faces = torch.arange(3 * len(faces)).reshape(-1, 3)
        fv = faces.astype(np.int64)
        part = body.skin_part[fv]  # (F, 3)
        major = np.where(part[:, 1] == part[:, 2], part[:, 1], part[:, 0])
        colour = _PALETTE[major].copy()
        front = body.front[fv].sum(1) >= 2
        head = np.isin(major, (15,))
        colour[head & ~front] = _HAIR
        torso = np.isin(major, (0, 3, 6, 9))
        colour[torso & ~front] *= _BACK_DARKEN
        self.face_colour = torch.from_numpy(colour)  # (F, 3)
        lab = body.part_labels[fv]
        self.face_part = torch.from_numpy(np.where(lab[:, 1] == lab[:, 2], lab[:, 1], lab[:, 0]))  # (F,)

    def render(self, pix: torch.Tensor, cam_verts: torch.Tensor, size: int, light: torch.Tensor):
        """pix (B, V, 3) pixel x, y and depth, cam_verts (B, V, 3) camera-frame metres (for normals)
        -> colour (B, H, W, 3) in [0, 1], mask, part labels, face ids."""
        fn = _face_normals(cam_verts, self.faces)  # (B, F, 3) outward, camera frame (x right, y down, z away)
        # Back-face culling (the surfaces are closed and outward-oriented, so the visible result is unchanged and
        # the rasteriser does half the work): a triangle soup whose back faces get a negative depth, which the
        # rasteriser drops. Soup triangle k is face k, so face indices keep their meaning.
        back = (fn * cam_verts[:, self.faces[:, 0]]).sum(-1) >= 0  # (B, F)
        soup = pix[:, self.faces.reshape(-1)].reshape(pix.shape[0], -1, 3, 3).clone()  # (B, F, 3 corners, 3)
        soup[..., 2] = torch.where(back[..., None], torch.full_like(soup[..., 2], -1.0), soup[..., 2])
        frags = self._rasterize(soup.reshape(pix.shape[0], -1, 3), self._soup_faces, size, size)
        fi = frags.face_index  # (B, H, W)
        mask = fi >= 0
        vn = _vertex_normals(fn, self.faces, cam_verts.shape[1])  # (B, V, 3)
        bi, yi, xi = mask.nonzero(as_tuple=True)  # shade covered pixels only
        f = fi[bi, yi, xi]
        corner_n = vn[bi[:, None], self.faces[f]]  # (P, 3 corners, 3)
        n = torch.nn.functional.normalize((frags.bary[bi, yi, xi][..., None] * corner_n).sum(1), dim=-1)
        lam = (n * light[bi]).sum(-1).clamp_min(0)  # (P,)
        colour = torch.zeros(*fi.shape, 3)
        colour[bi, yi, xi] = self.face_colour[f] * (0.45 + 0.6 * lam)[:, None]
        fidx = fi.clamp_min(0)
        return colour.clamp(0, 1), mask, self.face_part[fidx] * mask, fi


def _face_normals(v: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, V, 3) vertices -> (B, F, 3) area-weighted face normals (outward for our winding)."""
    a, b, c = v[:, faces[:, 0]], v[:, faces[:, 1]], v[:, faces[:, 2]]
    return torch.linalg.cross(b - a, c - a, dim=-1)


def _vertex_normals(fn: torch.Tensor, faces: torch.Tensor, n_verts: int) -> torch.Tensor:
    """Face normals (B, F, 3) -> unit vertex normals (B, V, 3)."""
    vn = fn.new_zeros(fn.shape[0], n_verts, 3)
    for k in range(3):
        vn.index_add_(1, faces[:, k], fn)
    return torch.nn.functional.normalize(vn, dim=-1)


def backgrounds(rng: np.random.Generator, n: int, out_size: int) -> torch.Tensor:
    """(n, size, size, 3) textured backgrounds: gradient + low-frequency noise + gratings + a few shapes, drawn
    at half resolution (cheap) and upsampled."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    size = (out_size + 1) // 2
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    c0, c1 = torch.rand(n, 1, 1, 3, generator=g), torch.rand(n, 1, 1, 3, generator=g)
    ang = torch.rand(n, 1, 1, generator=g) * 2 * math.pi
    t = (xx * torch.cos(ang) + yy * torch.sin(ang) + 1) / 2  # (n, S, S)
    img = c0 + (c1 - c0) * t[..., None] * 0.8
    for cells in (4, 12, 40):
        noise = torch.rand(n, 3, cells, cells, generator=g)
        up = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        img = img + (up.permute(0, 2, 3, 1) - 0.5) * (0.5 if cells == 4 else 0.25) * torch.rand(n, 1, 1, 1, generator=g)
    freq = 4 + 40 * torch.rand(n, 1, 1, generator=g)
    ang = torch.rand(n, 1, 1, generator=g) * math.pi
    grating = torch.sin((xx * torch.cos(ang) + yy * torch.sin(ang)) * freq * 2 * math.pi)
    amp = (torch.rand(n, 1, 1, 1, generator=g) < 0.5) * 0.25 * torch.rand(n, 1, 1, 3, generator=g)
    img = img + grating[..., None] * amp
    for _ in range(4):  # rectangles and ellipses (clutter)
        cx, cy, rx, ry = torch.rand(4, n, 1, 1, generator=g)
        rx, ry = 0.05 + 0.3 * rx, 0.05 + 0.3 * ry
        colour = torch.rand(n, 1, 1, 3, generator=g)
        ell = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1
        rect = ((xx - cx).abs() < rx) & ((yy - cy).abs() < ry)
        use = torch.rand(n, 1, 1, generator=g)
        shape = torch.where(use < 0.35, ell, torch.where(use < 0.7, rect, torch.zeros_like(rect)))
        img = torch.where(shape[..., None], 0.5 * img + 0.5 * colour, img)
    img = torch.nn.functional.interpolate(img.permute(0, 3, 1, 2), size=(out_size, out_size), mode="bilinear",
                                          align_corners=False)
    return img.permute(0, 2, 3, 1).clamp(0, 1)
