"""Batched training augmentation on the device: the reference study's per-sample torchvision pipeline
`Compose([RandomHorizontalFlip(), ColorJitter(0.1, 0.1, 0.1), RandomRotation(2)])`, with independent
parameters per sample, for a whole uint8 batch [N, 3, H, W] at once.

It equals torchvision's functional ops on the *float* image up to float32 rounding (torchvision's uint8
path truncates after every op: 1-2 levels apart; nearest sampling near a half-pixel boundary may pick
the neighbour). Draws come from the caller's `torch.Generator` (seeded per (seed, epoch, step)) in a
fixed order: flip, brightness/contrast/saturation, jitter order, angle; CPU and CUDA streams differ.
On a CPU, chunking to the L2 cache and folding the flip into the rotation grid make it about 4x the
per-sample loop (benchmarks/bench_augment.py)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
BRIGHTNESS, CONTRAST, SATURATION = 0, 1, 2
# CPU: process a few images at a time so the float working set (image, grayscale, grid: 24
# bytes a pixel) stays in a 2 MiB L2 cache. Over a whole batch every op went to DRAM, which
# made the batched version barely faster than torchvision's per-sample loop. Measured at
# 224 px: 1 to 8 images per chunk within 10 %, 3 about the best. GPU: the whole batch.
_CPU_CHUNK_PIXELS = 3 * 224 * 224


def _loop_copies(device: torch.device) -> bool:
    """Gather/scatter rows with a loop of copies (CPU: ~15x faster than index_select /
    index_copy_ on images) or with one indexed op (GPU: one kernel)."""
    return device.type == "cpu"


class AugParams(NamedTuple):
    """Per-sample parameters, each a tensor with first dimension N."""
    flip: torch.Tensor     # bool [N]
    factors: torch.Tensor  # float [N, 3]: brightness, contrast, saturation factor
    order: torch.Tensor    # long [N, 3]: a permutation of (0, 1, 2): the op applied 1st, 2nd, 3rd
    angle: torch.Tensor    # float [N], degrees, counter-clockwise like torchvision's rotate


def sample_params(n: int, generator: torch.Generator, device=None, flip_p: float = 0.5, jitter: float = 0.1,
                  degrees: float = 2.0) -> AugParams:
    """Draw N independent parameter sets from `generator`, on its device unless `device` is given."""
    device = generator.device if device is None else torch.device(device)

    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device)

    flip = rand(n) < flip_p
    lo = max(0.0, 1.0 - jitter)  # ColorJitter(b) draws uniform in [max(0, 1 - b), 1 + b]
    factors = lo + (1.0 + jitter - lo) * rand(n, 3)
    # argsort of iid uniforms is a uniform random permutation, like torchvision's randperm(4)
    # (its 4th op, hue, is skipped when hue=0, leaving a uniform order of the other three)
    order = rand(n, 3).argsort(dim=1)
    angle = -degrees + 2 * degrees * rand(n)
    return AugParams(flip, factors, order, angle)


def _theta(params: AugParams, h: int, w: int) -> torch.Tensor:
    """[N, 2, 2] maps from output to input coordinates, normalised like F.affine_grid: torchvision's
    rotate samples the input at R(angle) p (pixel units, origin at the centre, y down); normalising x by
    w/2 and y by h/2 puts h/w and w/h on the off-diagonal. The flip (first) is folded in by negating
    the first row, sparing a pass over the pixels: the colour ops between act per pixel (and on an
    image mean a flip keeps), so they commute with it."""
    rad = params.angle.to(torch.float64) * (math.pi / 180)
    cos, sin = rad.cos(), rad.sin()
    sign = 1.0 - 2.0 * params.flip.to(torch.float64)
    theta = torch.stack([torch.stack([sign * cos, sign * -sin * (h / w)], dim=1),
                         torch.stack([sin * (w / h), cos], dim=1)], dim=1)
    return theta.to(torch.float32)


def _jitter_(x: torch.Tensor, op: int, factor: torch.Tensor, gray: torch.Tensor) -> None:
    """One ColorJitter op in place on float [C, 3, H, W] in [0, 255] (factor [C, 1, 1, 1], `gray` a
    [C, H, W] buffer): torchvision's clamp(f x + (1 - f) other), other = 0, the mean grayscale or the
    grayscale, with the same products and sum (lerp_ would round differently, and is slow here)."""
    if op == BRIGHTNESS:
        x.mul_(factor)
    elif op == CONTRAST:
        # mean of the grayscale = grayscale of the channel means (it is linear): one read pass
        means = x.mean(dim=(-2, -1))
        mean = _GRAY[0] * means[:, 0] + _GRAY[1] * means[:, 1] + _GRAY[2] * means[:, 2]
        x.mul_(factor).add_(mean.view(-1, 1, 1, 1) * (1.0 - factor))
    else:
        r, g, b = x.unbind(dim=1)
        torch.mul(r, _GRAY[0], out=gray).add_(g, alpha=_GRAY[1]).add_(b, alpha=_GRAY[2])
        gray.mul_((1.0 - factor).view(-1, 1, 1))
        torch.addcmul(gray.unsqueeze(1), x, factor, out=x)  # (1 - f) gray + f x
    x.clamp_(0.0, 255.0)


def apply_params(images: torch.Tensor, params: AugParams, out_dtype: torch.dtype = torch.uint8,
                 chunk: int | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """flip -> jitter (each sample's order, each op clamped) -> rotation (nearest, fill 0) of a uint8 batch
    [N, 3, H, W], into [0, 255] of `out_dtype` (uint8 rounded to nearest). `chunk`: images processed
    together (default: 3 at 224 px on a CPU, all on a GPU). `out`: a tensor to write into (its dtype
    wins); reusing one spares a CPU the page faults of a fresh output (about 0.2 ms an image)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a batch [N, 3, H, W], got {tuple(images.shape)}")
    n, _, h, w = images.shape
    dev = images.device
    if chunk is None:
        chunk = max(1, _CPU_CHUNK_PIXELS // (h * w)) if dev.type == "cpu" else n
    chunk = max(1, min(chunk, n))
    factors = params.factors.to(device=dev, dtype=torch.float32)
    theta_t = _theta(params, h, w).to(dev).transpose(1, 2)  # [N, 2, 2], for row vectors
    # F.affine_grid's base grid: pixel centres (x, y), normalised (align_corners=False)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=dev)
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=dev)
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).view(1, h * w, 2)
    if out is None:
        out = torch.empty(n, 3, h, w, dtype=out_dtype, device=dev)
    elif out.shape != images.shape or out.device != dev:
        raise ValueError(f"out is {tuple(out.shape)} on {out.device}, expected {tuple(images.shape)} on {dev}")
    out_dtype = out.dtype
    # Working buffers, reused by every chunk: on a CPU, fresh megabyte-sized temporaries
    # page-fault on every allocation, which cost more than the arithmetic.
    x_buf = torch.empty(chunk, 3, h, w, device=dev)
    gray_buf = torch.empty(chunk, h, w, device=dev)
    grid_buf = torch.empty(chunk, h, w, 2, device=dev)

    # Group the samples by jitter order (6 permutations), so each chunk runs one op per
    # position rather than all three ops and a per-sample select.
    order = params.order.cpu()  # one small device-to-host copy on a GPU
    code = order[:, 0] * 9 + order[:, 1] * 3 + order[:, 2]
    for perm in code.unique().tolist():
        members = (code == perm).nonzero().flatten()
        ops = order[members[0]].tolist()
        for s in range(0, len(members), chunk):
            rows = members[s:s + chunk].tolist()
            idx = members[s:s + chunk].to(dev)
            c = len(rows)
            x, grid = x_buf[:c], grid_buf[:c]
            if _loop_copies(dev):
                for j, i in enumerate(rows):
                    x[j].copy_(images[i])
            else:
                x.copy_(images.index_select(0, idx))
            for op in ops:
                _jitter_(x, op, factors[idx, op].view(c, 1, 1, 1), gray_buf[:c])
            # the sampling grid, like F.affine_grid: base points (x, y) times theta^T
            torch.bmm(base.expand(c, -1, -1), theta_t[idx], out=grid.view(c, h * w, 2))
            # zeros padding == RandomRotation's default fill=0
            y = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            if not out_dtype.is_floating_point:
                y.round_()  # to nearest, not truncation like torchvision's per-op .to(uint8)
            if _loop_copies(dev):
                for j, i in enumerate(rows):
                    out[i].copy_(y[j])
            else:
                out.index_copy_(0, idx, y.to(out_dtype))
    return out


class BatchAugment(torch.nn.Module):
    """flip(p) + ColorJitter(jitter, jitter, jitter) + RandomRotation(degrees), per sample, batched:
    `forward(images, generator)` on uint8 [N, 3, H, W] and a generator on the same device."""

    def __init__(self, flip_p: float = 0.5, jitter: float = 0.1, degrees: float = 2.0,
                 out_dtype: torch.dtype = torch.uint8):
        super().__init__()
        self.flip_p, self.jitter, self.degrees, self.out_dtype = flip_p, jitter, degrees, out_dtype

    def forward(self, images: torch.Tensor, generator: torch.Generator,
                out: torch.Tensor | None = None) -> torch.Tensor:
        if generator.device.type != images.device.type:
            raise ValueError(f"generator on {generator.device} but images on {images.device}")
        params = sample_params(images.shape[0], generator, images.device, self.flip_p, self.jitter, self.degrees)
        return apply_params(images, params, self.out_dtype, out=out)

    def extra_repr(self) -> str:
        return f"flip_p={self.flip_p}, jitter={self.jitter}, degrees={self.degrees}, out_dtype={self.out_dtype}"
