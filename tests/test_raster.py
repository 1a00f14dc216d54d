"""Rasteriser: exact coverage, z-buffer order, barycentrics, culling, and agreement with a brute-force reference."""
import numpy as np
import pytest
import torch

from compress.raster import project_perspective, rasterize


def _brute_force(verts: np.ndarray, faces: np.ndarray, h: int, w: int) -> np.ndarray:
    """Reference: test every pixel centre against every face in float64; nearest (then lowest index) wins."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    best = np.full((h, w), np.inf)
    out = np.full((h, w), -1)
    for f, (i, j, k) in enumerate(faces):
        a, b, c = verts[i], verts[j], verts[k]
        area = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
        if area == 0 or min(a[2], b[2], c[2]) <= 0:
            continue
        w0 = ((c[0] - b[0]) * (ys - b[1]) - (c[1] - b[1]) * (xs - b[0])) / area
        w1 = ((a[0] - c[0]) * (ys - c[1]) - (a[1] - c[1]) * (xs - c[0])) / area
        w2 = 1 - w0 - w1
        inside = (w0 >= 0) & (w1 >= 0) & (w2 >= 0)
        z = w0 * a[2] + w1 * b[2] + w2 * c[2]
        win = inside & (z < best)
        best[win], out[win] = z[win], f
    return out


def test_single_triangle_covers_expected_pixels():
    verts = torch.tensor([[[1.0, 1.0, 1.0], [5.0, 1.0, 1.0], [1.0, 5.0, 1.0]]])
    frags = rasterize(verts, torch.tensor([[0, 1, 2]]), 6, 6)
    expected = np.zeros((6, 6), dtype=bool)
    # pixel centres (j+.5, i+.5) with x >= 1, y >= 1, x + y <= 6; centres on the hypotenuse count (inclusive edges)
    for i in range(6):
        for j in range(6):
            x, y = j + 0.5, i + 0.5
            expected[i, j] = x >= 1 and y >= 1 and x + y <= 6
    assert expected.sum() == 10
    np.testing.assert_array_equal(frags.mask[0].numpy(), expected)
    assert (frags.face_index[0][~frags.mask[0]] == -1).all()


def test_both_windings_render_the_same_pixels():
    verts = torch.tensor([[[0.3, 0.2, 2.0], [7.7, 1.1, 2.0], [2.2, 6.9, 2.0]]])
    a = rasterize(verts, torch.tensor([[0, 1, 2]]), 8, 8)
    b = rasterize(verts, torch.tensor([[0, 2, 1]]), 8, 8)
    assert a.mask.sum() > 10
    torch.testing.assert_close(a.mask, b.mask)
    torch.testing.assert_close(a.depth, b.depth)


def _quad(x0, y0, x1, y1, z):
    v = [[x0, y0, z], [x1, y0, z], [x1, y1, z], [x0, y1, z]]
    return torch.tensor(v), torch.tensor([[0, 1, 2], [0, 2, 3]])


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_quad_wins_regardless_of_order(near_first):
    va, fa = _quad(0, 0, 6, 6, 1.0)  # near
    vb, fb = _quad(3, 3, 10, 10, 5.0)  # far, overlaps the near quad on [3, 6)^2
    parts = [(va, fa), (vb, fb)] if near_first else [(vb, fb), (va, fa)]
    verts = torch.cat([parts[0][0], parts[1][0]])[None]
    faces = torch.cat([parts[0][1], parts[1][1] + 4])
    frags = rasterize(verts, faces, 10, 10)
    near_faces = {0, 1} if near_first else {2, 3}
    overlap = frags.face_index[0, 3:6, 3:6]
    assert all(int(f) in near_faces for f in overlap.flatten())
    assert torch.allclose(frags.depth[0, 3:6, 3:6], torch.tensor(1.0))
    assert torch.allclose(frags.depth[0, 7:, 7:], torch.tensor(5.0))
    assert frags.mask[0].sum() == 36 + 49 - 9


def test_barycentrics_sum_to_one_and_interpolate_positions():
    g = torch.Generator().manual_seed(0)
    verts = torch.rand(2, 30, 3, generator=g, dtype=torch.float64) * torch.tensor([16.0, 12.0, 3.0]) + torch.tensor(
        [0.0, 0.0, 1.0], dtype=torch.float64)
    faces = torch.randint(0, 30, (40, 3), generator=g)
    frags = rasterize(verts, faces, 12, 16)
    m = frags.mask
    assert m.sum() > 50
    torch.testing.assert_close(frags.bary[m].sum(-1), torch.ones(int(m.sum()), dtype=torch.float64))
    assert (frags.bary[m] >= -1e-9).all()
    b_idx, rows, cols = m.nonzero(as_tuple=True)
    corners = verts[b_idx[:, None], faces[frags.face_index[m]]]  # (P, 3, 3)
    interp = (frags.bary[m][:, :, None] * corners).sum(1)
    centres = torch.stack([cols, rows], -1).double() + 0.5
    torch.testing.assert_close(interp[:, :2], centres)
    torch.testing.assert_close(interp[:, 2], frags.depth[m])


def test_perspective_correct_barycentrics_recover_the_3d_point():
    pts = torch.tensor([[[-0.5, -0.4, 0.0], [0.6, -0.3, 0.8], [0.0, 0.7, -0.5]]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0, 2.5]], dtype=torch.float64)
    pix = project_perspective(pts, t, focal_length=40.0, center=torch.tensor([16.0, 16.0]))
    frags = rasterize(pix, torch.tensor([[0, 1, 2]]), 32, 32, perspective_correct=True)
    m = frags.mask[0]
    assert m.sum() > 50
    cam = pts[0] + t[0]  # camera-frame corners (3, 3)
    p3 = frags.bary[0][m] @ cam  # interpolated camera-frame points (P, 3)
    rows, cols = m.nonzero(as_tuple=True)
    # each point lies on the ray of its pixel centre and its z is the reported depth
    torch.testing.assert_close(40.0 * p3[:, 0] / p3[:, 2] + 16.0, cols.double() + 0.5)
    torch.testing.assert_close(40.0 * p3[:, 1] / p3[:, 2] + 16.0, rows.double() + 0.5)
    torch.testing.assert_close(p3[:, 2], frags.depth[0][m])


def test_empty_when_behind_or_outside():
    verts = torch.tensor([[[1.0, 1.0, -1.0], [5.0, 1.0, -1.0], [1.0, 5.0, -2.0]]])
    faces = torch.tensor([[0, 1, 2]])
    assert not rasterize(verts, faces, 8, 8).mask.any()
    outside = torch.tensor([[[20.0, 1.0, 1.0], [25.0, 1.0, 1.0], [20.0, 5.0, 1.0]]])
    frags = rasterize(outside, faces, 8, 8)
    assert not frags.mask.any()
    assert (frags.face_index == -1).all() and (frags.depth == 0).all()


@pytest.mark.parametrize("chunk_size", [4096, 1 << 20])
def test_matches_brute_force_reference_with_small_and_large_faces(chunk_size):
    g = torch.Generator().manual_seed(2)
    b, h, w = 3, 40, 48
    small = torch.rand(b, 60, 3, generator=g, dtype=torch.float64) * torch.tensor([48.0, 40.0, 4.0])
    big = torch.rand(b, 6, 3, generator=g, dtype=torch.float64) * torch.tensor([90.0, 80.0, 4.0]) - torch.tensor(
        [20.0, 20.0, 0.0])
    verts = torch.cat([small, big], 1)
    verts[..., 2] += 0.5
    faces = torch.cat([torch.randint(0, 60, (80, 3), generator=g), torch.randint(60, 66, (4, 3), generator=g)])
    frags = rasterize(verts, faces, h, w, chunk_size=chunk_size)
    for i in range(b):
        ref = _brute_force(verts[i].numpy(), faces.numpy(), h, w)
        assert (ref >= 0).sum() > 200
        np.testing.assert_array_equal(frags.face_index[i].numpy(), ref)
        # the batch result is the single-sample result
        one = rasterize(verts[i:i + 1], faces, h, w, chunk_size=chunk_size)
        torch.testing.assert_close(one.face_index[0], frags.face_index[i])
