"""SAMed augmentation: geometry exactness, image/label consistency, reproducibility."""

from __future__ import annotations

import torch

from ragsam.training.augment import (
    AugmentConfig,
    augment_batch,
    draw_transform,
    rot_flip,
    rotate,
    sample_generator,
)


def _pair(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    label = torch.randint(0, 4, (12, 12))
    image = label[None].float().repeat(3, 1, 1) / 3.0  # image encodes the label
    return image, label


def test_rotate_90_is_exact_quarter_turn_and_0_is_identity():
    image, label = _pair()
    img, lab = rotate(image, label, 90.0)
    assert torch.equal(lab, torch.rot90(label, -1))
    assert torch.allclose(img, torch.rot90(image, -1, dims=(1, 2)), atol=1e-5)
    img0, lab0 = rotate(image, label, 0.0)
    assert torch.equal(lab0, label) and torch.allclose(img0, image, atol=1e-6)


def test_rotation_keeps_label_ids_and_zero_fills_corners():
    label = torch.zeros(32, 32, dtype=torch.long)
    label[:, :] = 5
    _, lab = rotate(label[None].float(), label, 17.0)
    assert set(lab.unique().tolist()) == {0, 5}  # nearest: no new ids
    assert lab[0, 0] == 0 and lab[16, 16] == 5


def test_rot_flip_moves_image_and_label_together():
    image, label = _pair(1)
    for k in range(4):
        for axis in (0, 1):
            img, lab = rot_flip(image, label, k, axis)
            assert torch.equal(img[0] * 3.0, lab.float())
    img, lab = rot_flip(image, label, 1, 1)  # one quarter turn, then flip columns: hand-checked
    assert torch.equal(lab, torch.flip(torch.rot90(label, 1), dims=(1,)))


def test_branch_frequencies_follow_samed():
    cfg = AugmentConfig()
    kinds = [draw_transform(cfg, sample_generator(7, 0, p))[0] for p in range(4000)]
    freq = {k: kinds.count(k) / len(kinds) for k in ("rot_flip", "rotate", "none")}
    assert abs(freq["rot_flip"] - 0.5) < 0.03
    assert abs(freq["rotate"] - 0.25) < 0.03 and abs(freq["none"] - 0.25) < 0.03
    angles = [draw_transform(cfg, sample_generator(7, 1, p)) for p in range(500)]
    assert all(-20 <= a[1] <= 20 for a in angles if a[0] == "rotate")


def test_batch_augmentation_is_keyed_by_seed_epoch_position():
    images = torch.stack([_pair(i)[0] for i in range(4)])
    labels = torch.stack([_pair(i)[1] for i in range(4)])
    cfg = AugmentConfig()
    a = augment_batch(images, labels, cfg, seed=3, epoch=2, positions=[0, 1, 2, 3])
    b = augment_batch(images, labels, cfg, seed=3, epoch=2, positions=[0, 1, 2, 3])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # one sample alone gives the same result as inside the batch (independent of batching)
    c = augment_batch(images[2:3], labels[2:3], cfg, seed=3, epoch=2, positions=[2])
    assert torch.equal(c[1][0], a[1][2])
    other = [augment_batch(images, labels, cfg, seed=3, epoch=e, positions=[0, 1, 2, 3])[1] for e in range(3, 8)]
    assert any(not torch.equal(o, a[1]) for o in other)
    off = augment_batch(images, labels, AugmentConfig(enabled=False), 3, 2, [0, 1, 2, 3])
    assert off[0] is images and off[1] is labels
