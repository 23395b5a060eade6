"""Image augmentation for encoder training: DrQ-style random shift (pad, then random crop back to size).

:func:`random_shift` pads each image by ``pad`` pixels repeating the border (replicate padding, as DrQ)
and crops a random window of the original size, i.e. shifts the image by an integer offset in
[-pad, pad] along each axis. For a batch of clips (B, T, C, H, W) every frame of one sample gets the
same shift (so the frames of a sample stay aligned, as VIP/ICVF expect) and samples get independent
shifts. Works on any dtype (uint8 or float) and device, and allocates no padded copy: the crop reads
the source through clamped indices, which is exactly replicate padding.

:func:`shift_frames` is the same shift on stored frames (B, H, W, C) (any dtype; the RL agents shift uint8 before
the float conversion, a quarter of the bytes), returning (B, H, W, C) in the same layout, so that
``to_float_images`` of the result is a channels-last (B, C, H, W) tensor: the memory format oneDNN's convolutions
run fastest on, with no copy in between. ``to_float_images(shift_frames(u, o))`` equals
``shift_images(to_float_images(u), o)`` exactly (a shift only moves values).
"""
from __future__ import annotations

import torch


def random_shifts(batch: int, pad: int, generator: torch.Generator | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """Random offsets (batch, 2) as (dy, dx) in [-pad, pad], drawn with ``generator`` on its device; without a
    generator, from ``device``'s default generator (on a GPU: graph-safe, fresh draws at each CUDA-graph replay)."""
    gen_device = generator.device if generator is not None else (device if device is not None else "cpu")
    offsets = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator, device=gen_device) - pad
    return offsets.to(device) if device is not None else offsets


def shift_images(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Shift each image of x (B, C, H, W) by ``offsets[b] = (dy, dx)`` with replicate padding at the borders.

    Output pixel (h, w) of sample b is input pixel (clamp(h + dy), clamp(w + dx)).
    """
    b, _, h, w = x.shape
    rows = (torch.arange(h, device=x.device).unsqueeze(0) + offsets[:, :1]).clamp_(0, h - 1)  # (B, H)
    cols = (torch.arange(w, device=x.device).unsqueeze(0) + offsets[:, 1:]).clamp_(0, w - 1)  # (B, W)
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    out = x[batch, :, rows.unsqueeze(2), cols.unsqueeze(1)]  # advanced indices first: (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def shift_frames(frames: torch.Tensor, offsets: torch.Tensor, pad: int | None = None) -> torch.Tensor:
    """Shift each frame of ``frames`` (B, H, W, C) by ``offsets[b] = (dy, dx)`` with replicate padding: output pixel
    (h, w) of frame b is input pixel (clamp(h + dy), clamp(w + dx)), as :func:`shift_images`. Returns a new
    contiguous (B, H, W, C) tensor of the same dtype.

    One ``index_select`` of whole output rows: the frames are padded along W only (a copy of (B, H, W + 2 pad, C)),
    every run of W * C values that starts at a pixel of that buffer is a row of one overlapping strided view, and
    output row (b, h) is the run that starts at pixel (b, clamp(h + dy), dx + pad). About 3x faster than a gather
    that computes an offset per pixel. ``pad``: the largest ``|dx|`` the offsets may hold (the augmentation's pad);
    given, no value is read back from the device (as a CUDA graph needs); by default ``max |dx|`` of the offsets.
    Any ``pad >= max |dx|`` gives the same result.
    """
    if frames.ndim != 4:
        raise ValueError(f"shift_frames: expected frames (B, H, W, C), got shape {tuple(frames.shape)}")
    b, h, w, c = frames.shape
    if b == 0 or h == 0 or w == 0 or c == 0:
        return frames.clone(memory_format=torch.contiguous_format)
    offsets = offsets.to(frames.device)
    pad = int(offsets[:, 1].abs().max()) if pad is None else int(pad)
    padded = torch.cat([frames[:, :, :1].expand(b, h, pad, c), frames, frames[:, :, -1:].expand(b, h, pad, c)], 2)
    flat = padded.reshape(-1)
    runs = flat.as_strided(((flat.numel() - w * c) // c + 1, w * c), (c, 1))  # run i starts at pixel i
    rows = (torch.arange(h, device=frames.device).unsqueeze(0) + offsets[:, :1]).clamp_(0, h - 1)  # (B, H)
    rows += torch.arange(b, device=frames.device).unsqueeze(1) * h
    start = rows * (w + 2 * pad) + (offsets[:, 1:] + pad)  # (B, H): first padded pixel of each output row
    return runs.index_select(0, start.reshape(-1)).view(b, h, w, c)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pad-and-random-crop x (B, C, H, W) or (B, T, C, H, W); the same crop for all T frames of a sample.

    ``pad`` = 0 returns ``x`` itself. ``generator`` (a ``torch.Generator``) makes the crops reproducible.
    """
    if pad < 0:
        raise ValueError(f"random_shift: pad must be >= 0, got {pad}")
    if x.ndim not in (4, 5):
        raise ValueError(f"random_shift: expected (B, C, H, W) or (B, T, C, H, W), got shape {tuple(x.shape)}")
    if pad == 0:
        return x
    offsets = random_shifts(x.shape[0], pad, generator, x.device)
    if x.ndim == 4:
        return shift_images(x, offsets)
    b, t, c, h, w = x.shape
    return shift_images(x.reshape(b, t * c, h, w), offsets).view(b, t, c, h, w)
