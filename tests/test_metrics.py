"""Metrics against closed forms, a SPIN-style numpy Procrustes reference, and hand-made label images."""
import numpy as np
import pytest
import torch

from compress.eval.metrics import ConfusionAccumulator, LspSegmentation, mpjpe, pa_mpjpe, procrustes_align, pve


def _reference_pa(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """SPIN's reconstruction_error written out per sample with numpy's SVD (spin_protocol.md section 4)."""
    out = []
    for x, y in zip(pred.astype(np.float64), gt.astype(np.float64)):
        mx, my = x.mean(0), y.mean(0)
        x0, y0 = x - mx, y - my
        k = x0.T @ y0
        u, _, vt = np.linalg.svd(k)
        z = np.eye(3)
        z[2, 2] = np.sign(np.linalg.det(u @ vt))
        r = vt.T @ z @ u.T
        s = np.trace(r @ k) / (x0**2).sum()
        t = my - s * r @ mx
        xh = s * x @ r.T + t
        out.append(np.linalg.norm(xh - y, axis=1).mean())
    return np.array(out)


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def test_identity_is_zero_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 14, 3)).astype(np.float32)
    for arr in (x, torch.from_numpy(x)):
        for fn in (mpjpe, pa_mpjpe, pve):
            v = fn(arr, arr)
            assert type(v) is type(arr) and tuple(v.shape) == (4,)
            assert np.allclose(np.asarray(v), 0.0, atol=1e-5)
    assert mpjpe(x, x).dtype == np.float32 and pa_mpjpe(torch.from_numpy(x), torch.from_numpy(x)).dtype == torch.float32


def test_known_offset_gives_known_mpjpe_and_zero_pa():
    rng = np.random.default_rng(1)
    gt = rng.normal(size=(3, 17, 3))
    pred = gt + np.array([0.03, -0.04, 0.0])  # |offset| = 0.05
    np.testing.assert_allclose(mpjpe(pred, gt), 0.05, rtol=1e-12)
    np.testing.assert_allclose(pve(pred, gt), 0.05, rtol=1e-12)
    np.testing.assert_allclose(pa_mpjpe(pred, gt), 0.0, atol=1e-12)
    # per-sample, not pooled: one sample off by 0.1, the other exact
    pred2 = gt[:2].copy()
    pred2[0, 5] += [0.0, 0.0, 1.7]  # one of 17 joints off by 1.7 -> 0.1
    np.testing.assert_allclose(mpjpe(pred2, gt[:2]), [0.1, 0.0], atol=1e-12)


def test_similarity_transformed_copy_has_zero_pa_mpjpe():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(5, 14, 3))
    pred = np.stack([1.7 * g @ _random_rotation(rng).T + rng.normal(size=3) for g in gt])
    assert (mpjpe(pred, gt) > 0.5).all()
    np.testing.assert_allclose(pa_mpjpe(pred, gt), 0.0, atol=1e-10)
    np.testing.assert_allclose(procrustes_align(pred, gt), gt, atol=1e-10)
    t = pa_mpjpe(torch.from_numpy(pred).float(), torch.from_numpy(gt).float())
    assert torch.allclose(t, torch.zeros(5), atol=1e-5)


def test_mirrored_sample_matches_reference_procrustes():
    rng = np.random.default_rng(3)
    gt = rng.normal(size=(3, 14, 3))
    pred = gt + 0.05 * rng.normal(size=gt.shape)
    pred[1] = gt[1] * np.array([-1.0, 1.0, 1.0])  # a mirror image: the best proper rotation cannot undo it
    pred[2] = 0.5 * (gt[2] @ _random_rotation(rng).T) * np.array([1.0, -1.0, 1.0])
    ours = pa_mpjpe(pred, gt)
    ref = _reference_pa(pred, gt)
    assert np.isfinite(ours).all()
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)
    assert ours[1] > 0.1 and ours[2] > 0.1  # no reflection allowed, so mirrored samples keep an error
    # the float32 torch path agrees too
    t = pa_mpjpe(torch.from_numpy(pred).float(), torch.from_numpy(gt).float()).numpy()
    np.testing.assert_allclose(t, ref, rtol=1e-4)


def test_random_pairs_match_reference():
    rng = np.random.default_rng(4)
    gt, pred = rng.normal(size=(8, 17, 3)), rng.normal(size=(8, 17, 3))
    np.testing.assert_allclose(pa_mpjpe(pred, gt), _reference_pa(pred, gt), rtol=1e-9)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        mpjpe(np.zeros((2, 14, 3)), np.zeros((2, 17, 3)))


def test_fgbg_scores_on_hand_made_masks():
    gt = np.array([[0, 0, 255, 255], [0, 0, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]], dtype=np.uint8)
    seg = LspSegmentation()
    fb_acc, _ = seg.update(pred, gt, np.zeros_like(gt), np.zeros_like(gt))
    # BG: tp 3, fp 1, fn 1 -> F1 6/8; FG: tp 3, fp 1, fn 1 -> 6/8; accuracy 6/8
    assert fb_acc == pytest.approx(75.0)
    s = seg.summary()
    assert s["fb_acc"] == pytest.approx(75.0)
    assert s["fb_f1"] == pytest.approx(0.75)


def test_parts_scores_ignore_label_and_background_count():
    gt = np.array([[0, 1, 1, 255], [2, 2, 0, 255]])
    pred = np.array([[0, 1, 2, 3], [2, 2, 1, 0]])
    acc = ConfusionAccumulator(7, 255)
    acc.update(pred, gt)
    # per class (tp, fp, fn), ignoring the two 255 pixels for tp/fp/fn:
    # 0: tp1 fp0 fn1 (pixel (1,2) predicted 1) -> F1 2/3 ; 1: tp1 fp1 fn1 -> 1/2 ; 2: tp2 fp1 fn0 -> 4/5
    # 3..6: no pixels at all -> undefined, left out of the mean (SPIN would give nan here)
    np.testing.assert_array_equal(acc.tp[:3], [1, 1, 2])
    np.testing.assert_array_equal(acc.fp[:4], [0, 1, 1, 0])
    np.testing.assert_array_equal(acc.fn[:3], [1, 1, 0])
    assert acc.f1 == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    # accuracy: ignored gt -> 0; pred 3 at (0,3) is wrong, pred 0 at (1,3) is right -> correct 0,1,-,-,2,2,-,(1,3) = 5/8
    assert acc.accuracy == pytest.approx(100 * 5 / 8)


def test_accumulation_is_over_the_dataset_not_per_image_mean():
    acc = ConfusionAccumulator(2)
    acc.update(np.ones((1, 2)), np.ones((1, 2)))  # perfect, 2 pixels
    acc.update(np.zeros((2, 4)), np.ones((2, 4)))  # all wrong, 8 pixels
    assert acc.accuracy == pytest.approx(20.0)  # 2/10, not mean(100, 0)
    # class 0: tp 0 fp 8 fn 0 -> 0 ; class 1: tp 2 fp 0 fn 8 -> 4/12
    assert acc.f1 == pytest.approx((0 + 4 / 12) / 2)


def test_all_seven_classes_perfect_gives_one():
    gt = np.arange(7).repeat(3).reshape(3, 7)
    seg = LspSegmentation()
    seg.update(gt > 0, gt > 0, gt, gt)
    s = seg.summary()
    assert s["parts_f1"] == pytest.approx(1.0) and s["parts_acc"] == pytest.approx(100.0)
    assert s["fb_f1"] == pytest.approx(1.0) and s["fb_acc"] == pytest.approx(100.0)
