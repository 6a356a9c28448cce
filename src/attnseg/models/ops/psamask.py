"""The point-wise spatial attention mask op of PSANet ("psamask"), in plain PyTorch.

The attention branch of PSANet predicts, at every position p of an H x W grid, a window of
``mask_h x mask_w`` weights centred on p. The op scatters those windows into an over-complete map with one
row per grid position, shape (N, H*W, H, W), writing zeros where a window falls outside the grid:

- collect (mode 0): ``out[n, q, p] = x[n, window_index(q - p), p]`` -- channel q is the position whose
  feature flows into p; read as ``bmm(features (C, HW), out (HW, HW))`` it gathers features into p.
- distribute (mode 1): ``out[n, p, q] = x[n, window_index(q - p), p]`` -- the transpose of collect; p
  distributes its feature to q.

Here ``window_index(d) = (d_h + mask_h // 2) * mask_w + (d_w + mask_w // 2)`` and q, p are flattened row-major.
This is what `psamask.cc` of PSANet_paddle and `lib/psa/src/cpu/psamask.cpp` of hszhao/semseg compute with a
loop over pixels. Here the op is pure data movement (pad, slice, reshape, permute), so outputs and
gradients equal the reference bit for bit and the graph exports to ONNX with standard operators.

How: the window offset along one axis (r = q - p + centre) becomes the absolute position q with the "skew"
trick of relative-position attention (pad each row of offsets with zeros, lay the rows end to end, re-read
with a row length one shorter; see `_resolve_axis`), first for the height axis, then for the width axis.
The intermediates stay near the output's size, and nothing is indexed per pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

COLLECT = 0
DISTRIBUTE = 1


def psa_grid_size(crop_size: int, output_stride: int = 8, shrink_factor: int = 2) -> int:
    """Side of the attention grid of PSANet for one image side.

    Three stride-2 convolutions/pools (3x3, pad 1) give ``ceil(crop / 8)`` at output stride 8; the PSA module
    then shrinks with ``(h - 1) // shrink + 1`` (bilinear, align_corners=True). Both are ceil divisions, so
    the grid side is ``ceil(crop / (output_stride * shrink_factor))``.

    Args:
        crop_size: image side in pixels (height or width).
        output_stride: backbone output stride (8, 16 or 32).
        shrink_factor: PSA shrink factor (1 = no shrink).
    """
    if crop_size < 1 or output_stride < 1 or shrink_factor < 1:
        raise ValueError(f"sizes must be positive: crop {crop_size}, stride {output_stride}, shrink {shrink_factor}")
    return (crop_size - 1) // (output_stride * shrink_factor) + 1


def psa_mask_size(
    crop_size: tuple[int, int], output_stride: int = 8, shrink_factor: int = 2
) -> tuple[int, int]:
    """Smallest odd mask that covers the whole attention grid from every position (semseg's default rule).

    ``mask = 2 * grid - 1`` per side with ``grid = psa_grid_size(...)``: 465x465 or 473x473 crops give the
    59x59 of the semseg configs, 705x705 / 713x713 give 89x89. Note that PSANet_paddle trains 1024x512 crops
    (grid 32x64, covering mask 63x127) with semseg's 59x59, so its windows do *not* cover the grid; that is
    a configuration choice, not this formula.

    Args:
        crop_size: training crop (height, width) in pixels.
        output_stride: backbone output stride.
        shrink_factor: PSA shrink factor.

    Returns:
        (mask_h, mask_w), both odd.
    """
    grid_h, grid_w = (psa_grid_size(side, output_stride, shrink_factor) for side in crop_size)
    return 2 * grid_h - 1, 2 * grid_w - 1


def _resolve_axis(x: torch.Tensor, mask_size: int) -> torch.Tensor:
    """(..., P, mask) indexed by (p, q - p + mask // 2) -> (..., P, P) indexed by (p, q); outside the window -> 0.

    Each row of window cells (the relative offset r = q - p + c, c = its centre) is padded with Z zeros on the
    right and the rows are laid end to end with length L = R + Z. Re-reading that buffer from offset c with row
    length L - 1 places entry (p, q) at c + p * (L - 1) + q = p * L + r: row p's cell r when 0 <= r < R, else
    a pad zero of row p (r >= R) or of row p - 1 (r < 0), which Z >= P - 1 - c guarantees. Z >= P + 1 - R keeps
    rows at least P long. A window reaching past the grid (c > P - 1) is first cropped to 2P - 1 cells.
    """
    size = x.shape[-2]
    centre = mask_size // 2
    if centre > size - 1:
        x = x.narrow(-1, centre - (size - 1), 2 * size - 1)
        centre = size - 1
    cells = x.shape[-1]
    zeros = max(size - 1 - centre, size + 1 - cells)
    row = cells + zeros
    batch = x.shape[:-2]
    flat = F.pad(x, (0, zeros)).reshape(*batch, size * row)
    skewed = flat[..., centre : centre + size * (row - 1)].reshape(*batch, size, row - 1)
    return skewed[..., :size]


def psa_mask(x: torch.Tensor, mode: int, mask_size: tuple[int, int]) -> torch.Tensor:
    """Scatter per-position attention windows into the over-complete (N, H*W, H, W) map.

    Args:
        x: window weights, shape (N, mask_h * mask_w, H, W); channel ``i * mask_w + j`` is the window cell
            (i, j), whose centre (mask_h // 2, mask_w // 2) is the position itself.
        mode: `COLLECT` (0) or `DISTRIBUTE` (1).
        mask_size: (mask_h, mask_w), both odd.

    Returns:
        Tensor (N, H*W, H, W): collect puts the source position on the channel axis, distribute the target.
    """
    if mode not in (COLLECT, DISTRIBUTE):
        raise ValueError(f"psa_mask mode must be 0 (collect) or 1 (distribute), got {mode}")
    mask_h, mask_w = mask_size
    if mask_h % 2 == 0 or mask_w % 2 == 0:
        raise ValueError(f"psa_mask window must have odd sides, got {mask_h}x{mask_w}")
    n, channels, height, width = x.shape
    if channels != mask_h * mask_w:
        raise ValueError(f"psa_mask expects {mask_h}*{mask_w}={mask_h * mask_w} channels, got {channels}")
    window = x.reshape(n, mask_h, mask_w, height, width)
    # (n, i, j, ph, pw) -> (n, j, pw, ph, i): the height pair last, then window row i -> qh.
    rows = _resolve_axis(window.permute(0, 2, 4, 3, 1), mask_h)
    # (n, j, pw, ph, qh) -> (n, ph, qh, pw, j): the width pair last, then window column j -> qw.
    full = _resolve_axis(rows.permute(0, 3, 4, 2, 1), mask_w)  # (n, ph, qh, pw, qw)
    if mode == COLLECT:
        out = full.permute(0, 2, 4, 1, 3)  # (n, qh, qw, ph, pw): source q on channels
    else:
        out = full.permute(0, 1, 3, 2, 4)  # (n, ph, pw, qh, qw): target q on the grid
    return out.reshape(n, height * width, height, width)


def psa_mask_gather(x: torch.Tensor, mode: int, mask_size: tuple[int, int]) -> torch.Tensor:
    """The same op written as one gather with an index built from the shapes (kept for benchmarks/tests).

    Costs an int64 index of (H*W)^2 entries; `psa_mask` avoids it.
    """
    mask_h, mask_w = mask_size
    n, channels, height, width = x.shape
    positions = height * width
    q_h = torch.arange(height, device=x.device).view(height, 1, 1, 1)
    q_w = torch.arange(width, device=x.device).view(1, width, 1, 1)
    p_h = torch.arange(height, device=x.device).view(1, 1, height, 1)
    p_w = torch.arange(width, device=x.device).view(1, 1, 1, width)
    cell_h = q_h - p_h + mask_h // 2
    cell_w = q_w - p_w + mask_w // 2
    inside = (cell_h >= 0) & (cell_h < mask_h) & (cell_w >= 0) & (cell_w < mask_w)
    # Cells outside the window read an appended all-zero channel.
    index = torch.where(inside, cell_h * mask_w + cell_w, torch.full_like(cell_h, channels))
    index = index.reshape(1, positions, positions).expand(n, positions, positions)
    padded = torch.cat([x.reshape(n, channels, positions), x.new_zeros(n, 1, positions)], dim=1)
    collected = padded.gather(1, index)  # (n, q, p)
    if mode == DISTRIBUTE:
        collected = collected.transpose(1, 2)
    return collected.reshape(n, positions, height, width)
