"""Class search for class-conditional projection (seed 003 §3 and Table 2).

Seed 003 projects into BigGAN by optimising the continuous class embedding c next to z,
starting from c₀ = W[predicted class] (W the class table, c = W·onehot). This module holds what
sits around that optimisation:

* :func:`nearest_class` — which row of W an (optimised) c is closest to: where the search ended.
* :func:`mean_embedding` — the mean row of W, a class-agnostic c₀.
* :func:`class_candidates` — the top-k classes to start from when the user does not know the
  class (``latentx project --class auto``): a classifier's top-k (seed 003 used an ImageNet
  ResNeXt), or, without one, a screening by the generator itself: every class draws the same
  ``samples`` latents, and classes are ranked by the best masked L1 between those drawings and
  the target warped into the generator's frame by ψ₀ (the box against the generator's typical
  object box, as the transform search starts). That costs ``num_classes × samples`` forward
  passes (BigGAN: 1,000 × 16 at 128–512 px — minutes on a GPU; on a CPU restrict it with
  ``among=`` or pass a classifier).
* :func:`project_best_class` — project once per candidate (``latentx.projection.project`` with
  ``classes=`` that candidate) and keep, per image, the candidate with the lowest best-of-seeds
  masked loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from latentx.transforms import SpatialTransform

__all__ = ["nearest_class", "mean_embedding", "class_candidates", "project_best_class"]


def _table(generator) -> Tensor:
    table = getattr(generator, "class_embedding", None)
    if not isinstance(table, Tensor) or table.dim() != 2:
        raise ValueError("class search: the generator has no class embedding table [num_classes, c_dim] "
                         "(load a class-conditional generator, e.g. latentx.models.load('digits-cgan'))")
    return table


def nearest_class(generator, c: Tensor) -> Tensor:
    """Labels [...] of the rows of the class table nearest (Euclidean) to c [..., c_dim]."""
    table = _table(generator)
    if not isinstance(c, Tensor) or c.shape[-1] != table.shape[1]:
        shape = list(c.shape) if isinstance(c, Tensor) else type(c).__name__
        raise ValueError(f"nearest_class: c must be [..., {table.shape[1]}], got {shape}")
    flat = c.reshape(-1, table.shape[1]).to(table)
    return torch.cdist(flat, table).argmin(1).reshape(c.shape[:-1])


def mean_embedding(generator) -> Tensor:
    """The mean row of the class table [c_dim]: a c₀ that favours no class."""
    return _table(generator).mean(0)


def _box_masks(boxes: Any, b: int, size: Sequence[int], dtype, device) -> Tensor:
    h, w = size
    bx = torch.as_tensor(boxes, dtype=torch.float64)
    if bx.dim() == 1:
        bx = bx[None]
    if bx.shape != (b, 4) or not bool(bx.isfinite().all()):
        raise ValueError(f"class_candidates: boxes must be [{b}, 4] finite (x0, y0, x1, y1) in pixels, "
                         f"got {list(bx.shape)}")
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    inside = ((ys[None, :, None] >= bx[:, 1, None, None]) & (ys[None, :, None] < bx[:, 3, None, None])
              & (xs[None, None, :] >= bx[:, 0, None, None]) & (xs[None, None, :] < bx[:, 2, None, None]))
    if not bool(inside.flatten(1).any(1).all()):
        raise ValueError("class_candidates: a box covers no pixel centre of its image")
    # SPEC C1's mask: 1 inside the object box, 0.3 outside.
    return torch.where(inside, 1.0, 0.3)[:, None].to(dtype=dtype, device=device)


@torch.no_grad()
def class_candidates(generator, images: Tensor, k: int = 5, *, boxes: Any = None, masks: Optional[Tensor] = None,
                     classifier: Optional[Callable[[Tensor], Tensor]] = None,
                     among: Optional[Sequence[int]] = None, samples: int = 16, seed: int = 0,
                     chunk: int = 256) -> Tensor:
    """The ``k`` most likely classes per image, best first: [B, k] int64 labels.

    Args:
        generator: a class-conditional :class:`latentx.models.Generator`.
        images: [B, 3, H, W] in [−1, 1] (the photo frame, as for ``project``).
        boxes / masks: the object as for ``project`` (boxes in pixels → 1 inside, 0.3 outside);
            neither: the whole image.
        classifier: optional ``classifier(images) → logits [B, num_classes]`` over the
            generator's classes; its top-k is returned (seed 003's class initialisation).
        among: restrict the screening to these labels (default: every class).
        samples: latents per class in the screening (the same for every class, so classes are
            compared on equal draws), z ~ N(0, I) clamped to the truncation bound, seeded.
        chunk: generator batch size of the screening.
    """
    table = _table(generator)
    n_classes = table.shape[0]
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"class_candidates: images must be [B, 3, H, W] in [-1, 1], got {shape}")
    pool = torch.arange(n_classes) if among is None else torch.as_tensor(list(among), dtype=torch.long)
    if pool.numel() == 0 or bool(((pool < 0) | (pool >= n_classes)).any()):
        raise ValueError(f"class_candidates: among must hold labels in [0, {n_classes}), got {pool.tolist()[:10]}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= pool.numel():
        raise ValueError(f"class_candidates: k must be an integer in [1, {pool.numel()}], got {k!r}")
    for name, v in (("samples", samples), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"class_candidates: {name} must be an integer >= 1, got {v!r}")
    B = images.shape[0]
    if classifier is not None:
        logits = classifier(images)
        if not isinstance(logits, Tensor) or logits.shape != (B, n_classes):
            shape = list(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"class_candidates: classifier must return logits [{B}, {n_classes}], got {shape}")
        return pool[logits[:, pool.to(logits.device)].topk(k, dim=1).indices.cpu()]

    like = generator.parameter_like()
    dtype = like.dtype if like.is_floating_point() else torch.float32
    device = like.device
    images = images.to(device=device, dtype=dtype)
    H, W = images.shape[2:]
    if masks is not None and boxes is not None:
        raise ValueError("class_candidates: pass masks or boxes, not both")
    if boxes is not None:
        masks = _box_masks(boxes, B, (H, W), dtype, device)
    elif masks is None:
        masks = torch.ones(B, 1, H, W, dtype=dtype, device=device)
    elif not isinstance(masks, Tensor) or masks.shape != (B, 1, H, W):
        raise ValueError(f"class_candidates: masks must be [{B}, 1, {H}, {W}]")
    masks = masks.to(device=device, dtype=dtype)
    gen_size = generator.resolution
    psi0 = SpatialTransform.from_boxes(masks, generator.object_box)
    target = psi0.apply(images, gen_size)  # [B, 3, h, w]
    weight = psi0.apply_mask(masks, gen_size).clamp(1e-4, 1.0)  # [B, 1, h, w]
    wsum = weight.flatten(1).sum(1) * 3

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.z_dim, generator=g).clamp(-generator.truncation, generator.truncation)
    z = z.to(device=device, dtype=dtype)
    scores = torch.empty(B, pool.numel(), dtype=torch.float64)
    per = max(1, chunk // samples)  # classes per generator call
    for start in range(0, pool.numel(), per):
        labels = pool[start:start + per]
        c = table[labels.to(table.device)].to(dtype).repeat_interleave(samples, 0)
        out = generator(z.repeat(len(labels), 1), c).reshape(len(labels), samples, 3, *gen_size)
        # masked L1 (SPEC C1's first term) of every drawing against every target: [B, n, samples]
        diff = (out[None] - target[:, None, None]).abs() * weight[:, None, None]
        l1 = diff.flatten(3).sum(3) / wsum[:, None, None]
        scores[:, start:start + len(labels)] = l1.amin(2).double().cpu()
    return pool[scores.topk(k, dim=1, largest=False).indices]


def _pick(values: list, choice: Tensor, batch: int):
    first = values[0]
    if isinstance(first, Tensor) and first.dim() >= 1 and first.shape[0] == batch:
        stacked = torch.stack([v.to(first.device) for v in values])  # [k, B, ...]
        idx = choice.to(first.device)
        return stacked[idx, torch.arange(batch, device=first.device)]
    if isinstance(first, dict) and first and all(isinstance(v, Tensor) for v in first.values()):
        return {key: _pick([v[key] for v in values], choice, batch) for key in first}
    return first


def project_best_class(generator, images: Tensor, candidates: Any, **project_kwargs):
    """Project with each candidate class as c₀ and keep, per image, the best one.

    Args:
        candidates: [B, k] labels (e.g. from :func:`class_candidates`), or [k] for every image.
        project_kwargs: passed to ``latentx.projection.project`` (boxes, method, budgets,
            ``seed`` — every candidate runs with the same seeds, so they are compared on the
            same draws).

    Returns:
        (result, info): ``result`` is a ``ProjectionResult`` holding, per image, the run of its
        chosen class (batched fields are picked per image; ``seconds`` is the total);
        ``info`` = {"candidates": [B, k], "losses": [B, k] best-of-seeds total masked loss per
        candidate, "chosen": [B] the kept labels, "nearest": [B] the class-table row nearest to
        the kept best-seed c}.
    """
    from latentx.projection import project

    if "classes" in project_kwargs or "c0" in project_kwargs:
        raise ValueError("project_best_class: the candidates set c0; do not pass classes= or c0=")
    B = images.shape[0] if isinstance(images, Tensor) and images.dim() == 4 else 1
    cand = torch.as_tensor(candidates, dtype=torch.long)
    if cand.dim() == 1:
        cand = cand[None].expand(B, -1)
    if cand.dim() != 2 or cand.shape[0] != B or cand.shape[1] < 1:
        raise ValueError(f"project_best_class: candidates must be [{B}, k] or [k] labels, got {list(cand.shape)}")
    results = [project(generator, images, classes=cand[:, j], **project_kwargs) for j in range(cand.shape[1])]
    losses = torch.stack([r.best()["losses"]["total"].detach().double().cpu() for r in results], 1)  # [B, k]
    choice = losses.argmin(1)
    if len(results) == 1:
        merged = results[0]
    else:
        values = {f.name: _pick([getattr(r, f.name) for r in results], choice, B)
                  for f in dataclasses.fields(results[0])}
        merged = dataclasses.replace(results[0], **values)
        if hasattr(merged, "seconds"):
            merged.seconds = sum(float(getattr(r, "seconds", 0.0)) for r in results)
    best_c = merged.best()["c"]
    info = {"candidates": cand, "losses": losses, "chosen": cand[torch.arange(B), choice],
            "nearest": nearest_class(generator, best_c).cpu() if best_c is not None else None}
    return merged, info
