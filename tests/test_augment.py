"""BatchAugment against torchvision's per-sample ops, its parameter draws, seeding, independence."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from clipdg_nb.images import augment
from clipdg_nb.images.augment import AugParams, BatchAugment, apply_params, sample_params

# Colour ops: same formulas in float32, the contrast mean summed in another order -> measured
# max difference 3e-7 of the [0, 1] range. Allow 1e-5 (0.0026 of a level).
VALUE_TOL = 1e-5
# Rotation: nearest sampling on a grid computed by a different float expression; a pixel whose
# source lies within rounding of a half-pixel boundary takes its neighbour. Measured: at most
# 2 pixels of an image (6e-5 at 224 px, 3.3e-4 at 64x48), 1e-5 of all pixels.
MAX_DIFF_FRACTION_PER_IMAGE = 2e-3
MAX_DIFF_FRACTION = 2e-4


def images(n, h, w, seed=0, smooth=False):
    g = torch.Generator().manual_seed(seed)
    if not smooth:
        return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)
    coarse = torch.rand(n, 3, max(2, h // 8), max(2, w // 8), generator=g) * 255
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False).round().to(torch.uint8)


def reference(img: torch.Tensor, p: AugParams, i: int) -> torch.Tensor:
    """torchvision.transforms.functional on one float image in [0, 1], in sample i's order."""
    y = img.float() / 255
    if p.flip[i]:
        y = TF.hflip(y)
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation]
    for op in p.order[i].tolist():
        y = ops[op](y, float(p.factors[i, op]))
    return TF.rotate(y, float(p.angle[i]), interpolation=InterpolationMode.NEAREST, fill=[0.0, 0.0, 0.0])


def neighbour_values(ref: torch.Tensor, hh: int, ww: int) -> torch.Tensor:
    """ref's [3] values at the 3x3 neighbourhood of (hh, ww), plus the fill: [k, 3]."""
    h, w = ref.shape[-2:]
    vals = [ref[:, y, x] for y in range(hh - 1, hh + 2) for x in range(ww - 1, ww + 2) if 0 <= y < h and 0 <= x < w]
    return torch.stack(vals + [torch.zeros(3)])


def check_against_reference(x, p, out01):
    fractions = []
    for i in range(len(x)):
        ref = reference(x[i], p, i)
        bad = (out01[i] - ref).abs().amax(dim=0) > VALUE_TOL
        fractions.append(bad.float().mean().item())
        # every differing pixel is a one-pixel shift: ours equals a neighbour of the reference
        for hh, ww in bad.nonzero().tolist():
            near = (neighbour_values(ref, hh, ww) - out01[i][:, hh, ww]).abs().amax(dim=1)
            assert near.min() <= VALUE_TOL, (i, hh, ww)
    assert max(fractions) <= MAX_DIFF_FRACTION_PER_IMAGE
    assert sum(fractions) / len(fractions) <= MAX_DIFF_FRACTION


@pytest.mark.parametrize("h, w", [(224, 224), (48, 64), (37, 53)])
def test_float_output_equals_torchvision_per_sample(h, w):
    x = images(24, h, w, seed=h)
    p = sample_params(24, torch.Generator().manual_seed(w))
    out = apply_params(x, p, torch.float32)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 255
    check_against_reference(x, p, out / 255)


def test_forced_parameters_cover_every_order_flip_and_extreme():
    """Each of the 6 orders, with and without flip, at the ends of the factor and angle ranges."""
    cases = list(itertools.product(itertools.permutations(range(3)), [False, True]))
    n = len(cases)
    g = torch.Generator().manual_seed(5)
    p = AugParams(flip=torch.tensor([f for _, f in cases]),
                  factors=torch.where(torch.rand(n, 3, generator=g) < 0.5, 0.9, 1.1),
                  order=torch.tensor([list(o) for o, _ in cases]),
                  angle=torch.linspace(-2, 2, n))
    x = images(n, 64, 64, seed=3)
    check_against_reference(x, p, apply_params(x, p, torch.float32) / 255)


def test_identity_parameters_return_the_input():
    x = images(6, 40, 56)
    p = AugParams(torch.zeros(6, dtype=torch.bool), torch.ones(6, 3), torch.arange(3).repeat(6, 1), torch.zeros(6))
    assert torch.equal(apply_params(x, p), x)


def test_uint8_output_is_the_rounded_float_output():
    x = images(12, 64, 48, seed=1)
    p = sample_params(12, torch.Generator().manual_seed(1))
    as_float = apply_params(x, p, torch.float32)
    as_uint8 = apply_params(x, p)
    assert as_uint8.dtype == torch.uint8
    assert torch.equal(as_uint8, as_float.round().to(torch.uint8))


def test_caveat_against_torchvision_uint8_pipeline():
    """torchvision on uint8 truncates after every op; on smooth images ours stays within 3 levels
    of it except at rotation-tie pixels (documented in the module)."""
    x = images(16, 96, 96, seed=2, smooth=True)
    p = sample_params(16, torch.Generator().manual_seed(2))
    ours = apply_params(x, p).int()
    far = 0
    for i in range(16):
        y = TF.hflip(x[i]) if p.flip[i] else x[i]
        for op in p.order[i].tolist():
            y = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation][op](y, float(p.factors[i, op]))
        y = TF.rotate(y, float(p.angle[i]), interpolation=InterpolationMode.NEAREST, fill=[0, 0, 0])
        far += ((ours[i] - y.int()).abs() > 3).sum().item()
    assert far / ours.numel() < 1e-3


def test_result_does_not_depend_on_batch_chunk_or_gather_path(monkeypatch):
    x = images(20, 32, 40, seed=4)
    p = sample_params(20, torch.Generator().manual_seed(4))
    whole = apply_params(x, p, torch.float32)
    for chunk in (1, 2, 7, 20):
        assert torch.equal(apply_params(x, p, torch.float32, chunk=chunk), whole)
    alone = [apply_params(x[i:i + 1], AugParams(*(t[i:i + 1] for t in p)), torch.float32) for i in range(20)]
    assert torch.equal(torch.cat(alone), whole)
    out = torch.full_like(whole, -1.0)
    assert apply_params(x, p, out=out) is out and torch.equal(out, whole)
    monkeypatch.setattr(augment, "_loop_copies", lambda device: False)  # the GPU path, on the CPU
    assert torch.equal(apply_params(x, p, torch.float32), whole)
    assert torch.equal(apply_params(x, p), whole.round().to(torch.uint8))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_parameter_distribution(seed):
    n = 20000
    p = sample_params(n, torch.Generator().manual_seed(seed))
    # margins are 9-14 standard deviations of each statistic, so they hold for any seed
    assert abs(p.flip.float().mean().item() - 0.5) < 0.05
    assert p.factors.min() >= 0.9 and p.factors.max() <= 1.1
    assert p.angle.min() >= -2 and p.angle.max() <= 2
    for values, lo, hi in [(p.factors[:, k], 0.9, 1.1) for k in range(3)] + [(p.angle, -2.0, 2.0)]:
        assert abs(values.mean().item() - (lo + hi) / 2) < 0.025 * (hi - lo)
        hist = torch.histc(values, bins=10, min=lo, max=hi) / n
        assert ((hist - 0.1).abs() < 0.02).all(), hist  # roughly uniform
        assert values.max() - values.min() > 0.98 * (hi - lo)  # reaches both ends
    assert (p.order.sort(dim=1).values == torch.arange(3)).all()  # permutations of 0, 1, 2
    perms = p.order[:, 0] * 9 + p.order[:, 1] * 3 + p.order[:, 2]
    freq = torch.stack([(perms == a * 9 + b * 3 + c).float().mean() for a, b, c in itertools.permutations(range(3))])
    assert ((freq - 1 / 6).abs() < 0.03).all(), freq


def test_parameters_are_independent_across_samples_and_fields():
    n = 20000
    p = sample_params(n, torch.Generator().manual_seed(9))
    fields = torch.stack([p.flip.float(), *p.factors.T, p.angle, p.order[:, 0].float()])
    corr = torch.corrcoef(torch.cat([fields[:, :-1], fields[:, 1:]]))
    # neighbours in the batch (lag 1) and different fields of one sample: |r| < 0.05 (7 sd)
    off_diagonal = corr - torch.diag(torch.diag(corr))
    assert off_diagonal.abs().max() < 0.05, corr


def test_identical_images_get_different_augmentations():
    x = images(1, 48, 48).expand(32, -1, -1, -1).contiguous()
    out = BatchAugment()(x, torch.Generator().manual_seed(0)).flatten(1)
    assert len({tuple(row.tolist()) for row in out}) == 32


def test_same_seed_same_output_different_seed_different_output():
    x = images(16, 64, 64, seed=7)
    aug = BatchAugment()

    def run(seed):
        return aug(x, torch.Generator().manual_seed(seed))

    assert torch.equal(run(123), run(123))
    assert not torch.equal(run(123), run(124))
    # forward is sample_params + apply_params with the generator's draws, nothing else
    expected = apply_params(x, sample_params(16, torch.Generator().manual_seed(123)))
    assert torch.equal(run(123), expected)
    # a generator continues its stream: the next call (the next step) differs from the first
    g = torch.Generator().manual_seed(123)
    first, second = aug(x, g), aug(x, g)
    assert not torch.equal(first, second)


def test_float_output_option_and_bad_input():
    x = images(4, 32, 32)
    assert BatchAugment(out_dtype=torch.float32)(x, torch.Generator().manual_seed(0)).dtype == torch.float32
    with pytest.raises(ValueError):
        apply_params(x[:, :1], sample_params(4, torch.Generator()))
