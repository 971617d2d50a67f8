"""AdvLatGAN (seed 001; SPEC C3): latent refinement with I-FGSM, and the training algorithms.

* :func:`refine` — AdvLatGAN-z: with G and D frozen, move latents by I-FGSM on
  ``log(1 − D(G(z)))`` (eq. 5, 6) inside an ℓ∞ ball around where they started, in chunks, on
  any device.
* :func:`hard_pair` — eq. 8: for each z₀, a z in its ball whose generation is close to
  G(z₀)'s while z is far from z₀ (a pair that tends to collapse).
* :func:`train_step` / :func:`train` — AdvLatGAN-qua (Alg. 1) and AdvLatGAN-div (Alg. 2);
  ``latent_steps=0`` is the vanilla GAN (and, for ``"div"``, plain MSGAN); ``inverse=True``
  trains -div with the inverse hard pair (eq. 8-inv: the ratio maximised).
* :func:`sample` — samples of a trained G, through AdvLatGAN-z when ``steps > 0``: the "+"
  variants (AdvLatGAN-qua+ / -div+ = a -qua / -div model sampled this way).

The five methods of the paper (Sec. 4.1, Table 2) in these terms:

=====================  ==============================================  ============================
method                 training                                        sampling
=====================  ==============================================  ============================
vanilla                ``train(latent_steps=0)``                       ``sample(G, D, z)``
AdvLatGAN-z            ``train(latent_steps=0)`` (or any trained G)    ``sample(G, D, z, steps=n)``
AdvLatGAN-qua          ``train(method="qua", latent_steps=t_z)``       ``sample(G, D, z)``
AdvLatGAN-div          ``train(method="div", latent_steps=t_z, ...)``  ``sample(G, D, z)``
AdvLatGAN-qua+ / div+  as -qua / -div                                  ``sample(G, D, z, steps=n)``
=====================  ==============================================  ============================

Class-conditional models (the paper's conditional experiments, G(c, z) and D(c, x)) are
called ``G(z, c)`` and ``D(x, c)``: pass ``c`` to :func:`refine`, :func:`sample` and
:func:`hard_pair`, and ``num_classes`` to :func:`train_step` / :func:`train`.

Every latent update is the fused op :func:`latentx.ops.ifgsm_step_`.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from typing import Callable, Iterator, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentx import losses, ops

Number = Union[float, int]
LossFn = Callable[[Tensor], Tensor]
METHODS = ("qua", "div")


class Refined(NamedTuple):
    """What :func:`refine` returns."""

    z: Tensor  #: refined latents, the input's shape, dtype and device
    scores: Tensor  #: [steps + 1] float64: mean D logit over all latents before step i; last: after the last step


class Sampled(NamedTuple):
    """What :func:`sample` returns."""

    x: Tensor  #: samples G(z) [N, ...] on z's device
    z: Tensor  #: the latents they come from [N, ...]: refined when steps > 0, else the input
    scores: Optional[Tensor]  #: refine's [steps + 1] mean D logits; None when steps = 0


def model_device(module: nn.Module, fallback: torch.device) -> torch.device:
    """The device of ``module``'s first parameter or buffer (``fallback`` when it has none)."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return fallback


@contextlib.contextmanager
def frozen(modules: Sequence[nn.Module], eval_mode: bool) -> Iterator[None]:
    """Turn off parameter gradients of ``modules`` (and, with ``eval_mode``, put them in eval
    mode) for the block; restore every flag afterwards, also on error."""
    params = [p for m in modules for p in m.parameters()]
    grad_flags = [p.requires_grad for p in params]
    training = [[sub.training for sub in m.modules()] for m in modules]
    for p in params:
        p.requires_grad_(False)
    if eval_mode:
        for m in modules:
            m.eval()
    try:
        yield
    finally:
        for p, flag in zip(params, grad_flags):
            p.requires_grad_(flag)
        for m, flags in zip(modules, training):
            for sub, flag in zip(m.modules(), flags):
                sub.training = flag


def score_loss(loss: Union[str, LossFn]) -> LossFn:
    """The per-sample objective AdvLatGAN-z minimises, from D's logits [B] → [B].

    ``"log1m"`` is eq. 5, ``log(1 − D(G(z)))``; any kind in :data:`latentx.losses.GAN_LOSSES`
    gives that kind's generator loss (use the one D was trained with); a callable is used as
    is. A sign step sees only the sign of ∂loss/∂z, so every loss that decreases in the logit
    (all but ``"lsgan"``) takes the same steps; they differ where a gradient underflows.
    """
    if callable(loss):
        return loss
    kind = "minimax" if loss == "log1m" else loss
    if kind not in losses.GAN_LOSSES:
        raise ValueError(f"loss must be 'log1m', one of {losses.GAN_LOSSES} or a callable, got {loss!r}")
    return lambda logits: losses.generator_loss(logits, kind, reduction="none")


def _generate(G: Callable[..., Tensor], z: Tensor, c: Optional[Tensor]) -> Tensor:
    """``G(z)``, or ``G(z, c)`` for a conditional generator."""
    return G(z) if c is None else G(z, c)


def _logits(D: Callable[..., Tensor], x: Tensor, b: int, c: Optional[Tensor] = None) -> Tensor:
    out = D(x) if c is None else D(x, c)
    if out.numel() != b:
        raise ValueError(f"D must return one logit per sample ([B] or [B, 1]), got shape {list(out.shape)} for B={b}")
    return out.reshape(b)


def check_classes(c, n: int, name: str = "c") -> None:
    """A class input for ``n`` samples: integer class indices [n], or floating-point
    conditions [n, ...] (one-hot rows, embeddings); anything else raises, naming ``name``.

    A floating-point [n] tensor is refused: it is almost always class indices in the wrong
    dtype, which an ``nn.Embedding`` would reject deep inside the model.
    """
    if not isinstance(c, Tensor):
        raise TypeError(f"{name} must be a tensor of class indices [N] (integer) or conditions [N, ...] "
                        f"(floating point), got {type(c).__name__}")
    integer = not c.is_floating_point() and not c.is_complex() and c.dtype != torch.bool
    if not ((integer and c.dim() == 1) or (c.is_floating_point() and c.dim() >= 2)):
        hint = " (class indices must be an integer tensor: use c.long())" if c.is_floating_point() else ""
        raise TypeError(f"{name} must be integer class indices [N] or floating-point conditions [N, ...], "
                        f"got {c.dtype} of shape {list(c.shape)}{hint}")
    if c.shape[0] != n:
        raise ValueError(f"{name} must hold one class per latent ({n}), got {c.shape[0]} (shape {list(c.shape)})")


def _check_int(name: str, value, minimum: int) -> None:
    """``value`` must be an integer (not a bool, not a float) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")


def _check_sampling(z, c, steps, batch_size, **modules) -> int:
    """The checks refine and sample share (each of ``modules`` is an nn.Module; z a floating
    tensor [N, ...]; steps >= 0; batch_size >= 1 or None; c for N latents). Returns N."""
    for name, module in modules.items():
        if not isinstance(module, nn.Module):
            raise TypeError(f"{name} must be an nn.Module, got {type(module).__name__}")
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() < 1:
        raise TypeError(f"z must be a floating-point tensor [N, ...], got "
                        f"{z.dtype if isinstance(z, Tensor) else type(z).__name__}")
    _check_int("steps", steps, 0)
    if batch_size is not None:
        _check_int("batch_size", batch_size, 1)
    if c is not None:
        check_classes(c, z.shape[0])
    return z.shape[0]


def _check_amount(name: str, value, n: Optional[int], positive: bool = False) -> None:
    """A step size or radius: a finite number >= 0 (> 0 with ``positive``), or a tensor of
    such values holding one value or one per latent [n]."""
    bound = "> 0" if positive else ">= 0"
    if isinstance(value, Tensor):
        if value.dim() != 0 and n is not None and tuple(value.shape) != (n,):
            raise ValueError(f"{name} must be a number or a tensor of one value per latent [{n}], "
                             f"got shape {list(value.shape)}")
        v = value.detach()
        bad = ~torch.isfinite(v) | ((v <= 0) if positive else (v < 0))
        if bool(bad.any()):
            raise ValueError(f"{name} must hold finite values {bound}, got {v.flatten()[bad.flatten()][0].item()}")
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if not (math.isfinite(value) and (value > 0 if positive else value >= 0)):
        raise ValueError(f"{name} must be a finite number {bound}, got {value}")


def _check_bounds(bounds) -> None:
    if bounds is None:
        return
    try:
        lower, upper = bounds
        ok = float(lower) <= float(upper)  # False for NaN
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"bounds must be (lower, upper) numbers with lower <= upper, got {bounds!r}")


def _check_impl(impl) -> None:
    if impl not in ops._native.IMPLS:
        raise ValueError(f"impl must be one of {ops._native.IMPLS}, got {impl!r}")


def _per_chunk(value: Union[Tensor, Number, None], n: int, lo: int, hi: int, device: torch.device, name: str):
    """A number as is; a per-latent tensor [N] sliced to the chunk and moved to its device."""
    if not isinstance(value, Tensor):
        return value
    if value.dim() == 0:
        return value.to(device)
    if value.shape != (n,):
        raise ValueError(f"{name} must be a number or a tensor of one value per latent [{n}], got {list(value.shape)}")
    return value[lo:hi].to(device)


def ifgsm(
    objective: Callable[[Tensor], Tensor],
    z: Tensor,
    *,
    steps: int,
    step_size: Union[Tensor, Number],
    anchor: Optional[Tensor] = None,
    radius: Union[Tensor, Number, None] = None,
    bounds: Optional[tuple[Number, Number]] = None,
    ascend: bool = False,
    impl: str = "auto",
    where: str = "",
    on_step: Optional[Callable[[int, Tensor], None]] = None,
) -> Tensor:
    """``steps`` I-FGSM steps (eq. 6) on ``objective(z).sum()``, updating ``z`` in place.

    Args:
        objective: latents [B, ...] → per-sample objective [B]; the steps descend it
            (ascend with ``ascend``). Freeze the networks it runs yourself.
        z: latents [B, ...], updated in place (must not require grad).
        steps, step_size: number of steps, and ε (a number or [B]).
        anchor, radius: the ℓ∞ ball's centre [B, ...] and radius (a number or [B]).
        bounds: (lower, upper) box for every coordinate.
        impl: the step's implementation (``"auto"``, ``"native"``, ``"reference"``).
        where: names the work in errors (e.g. the chunk).
        on_step: called as ``on_step(i, values)`` with step i's per-sample objective [B],
            detached, before z moves.

    Returns:
        ``z``.

    Raises:
        FloatingPointError: the objective or its gradient is not finite; names the step.
    """
    _check_int("steps", steps, 0)
    lower, upper = (None, None) if bounds is None else bounds
    for i in range(steps):
        zg = z.detach().requires_grad_(True)
        values = objective(zg)
        total = values.sum()
        if not torch.isfinite(total):
            raise FloatingPointError(f"AdvLatGAN: non-finite loss at step {i}{where}")
        (grad,) = torch.autograd.grad(total, zg)
        if not torch.isfinite(grad).all():
            raise FloatingPointError(f"AdvLatGAN: non-finite gradient at step {i}{where}")
        if on_step is not None:
            on_step(i, values.detach())
        ops.ifgsm_step_(z, grad, step_size=step_size, anchor=anchor, radius=radius, lower=lower,
                        upper=upper, ascend=ascend, impl=impl)
    return z


def refine(
    G: nn.Module,
    D: nn.Module,
    z: Tensor,
    *,
    c: Optional[Tensor] = None,
    steps: int,
    step_size: Union[Tensor, Number],
    radius: Union[Tensor, Number, None] = None,
    bounds: Optional[tuple[Number, Number]] = None,
    loss: Union[str, LossFn] = "log1m",
    batch_size: Optional[int] = None,
    progress: bool = True,
    impl: str = "auto",
) -> Refined:
    """AdvLatGAN-z (eq. 5, 6): move latents so D scores G's samples higher, G and D frozen.

    ``z_{i+1} = clamp(clamp(z_i − ε·sign ∇_z L(D(G(z_i))), z₀ − r, z₀ + r), lower, upper)``,
    ``steps`` times, per chunk of ``batch_size`` latents: only one chunk is ever on the
    models' device, so N is limited by the memory that holds ``z``. G and D run in eval mode
    (a latent's result does not depend on its chunk) with parameter gradients off; their
    flags are restored afterwards.

    Args:
        G: generator, [B, ...latent] → samples. D: discriminator, samples → [B] or [B, 1] logits.
            With ``c``: ``G(z, c)`` and ``D(x, c)``.
        z: starting latents z₀ [N, ...] on any device (the CPU for large N); not modified.
        c: the class of each latent for a class-conditional pair: integer indices [N] or
            floating-point conditions [N, ...] (see :func:`check_classes`), any device; it
            stays fixed while z moves. None: an unconditional pair.
        steps: I-FGSM steps n (the paper: 100 at ε = 0.01 for CIFAR/STL, 30 at 0.03 for
            MNIST, 8,000 at 0.003 for the ring).
        step_size: ε, a number or one per latent [N].
        radius: ℓ∞ radius r around z₀ (a number or [N]); None: no ball.
        bounds: (lower, upper) for every coordinate (truncation, e.g. (−2, 2)); None: none.
        loss: the objective minimised (see :func:`score_loss`); ``"log1m"`` is eq. 5.
        batch_size: latents per chunk; None: all at once.
        progress: show a progress bar over chunks × steps.
        impl: the step's implementation (see :func:`latentx.ops.ifgsm_step`).

    Returns:
        :class:`Refined` ``(z, scores)``: refined latents like ``z`` and [steps + 1] mean
        logits (before each step, then after the last; zeros when N = 0).

    Raises:
        TypeError, ValueError: a bad argument (named in the message): non-integer ``steps``
            or ``batch_size``, a negative or non-finite ``step_size`` or ``radius``, bad
            ``bounds``, non-finite ``z``, a ``c`` of the wrong dtype or length.
        FloatingPointError: a non-finite loss or gradient, naming the step and chunk.
    """
    n = _check_sampling(z, c, steps, batch_size, G=G, D=D)
    _check_amount("step_size", step_size, n)
    if radius is not None:
        _check_amount("radius", radius, n)
    _check_bounds(bounds)
    _check_impl(impl)
    objective_of = score_loss(loss)
    # max(·, 1): N = 0 is valid (no chunks), and range() refuses a zero stride.
    chunk = max(n if batch_size is None else batch_size, 1)
    for lo in range(0, n, chunk):  # chunk by chunk: no copy of z as large as z
        if not bool(torch.isfinite(z[lo:lo + chunk]).all()):
            raise ValueError(f"z must be finite; latents {lo}:{min(lo + chunk, n)} hold NaN or inf")
    device = model_device(G, z.device)
    out = torch.empty_like(z)
    score_sums = torch.zeros(steps + 1, dtype=torch.float64, device=device)
    n_chunks = -(-n // chunk) if n else 0

    with frozen([G, D], eval_mode=True), tqdm(total=n_chunks * steps, disable=not progress,
                                              desc="AdvLatGAN-z", unit="step") as bar:
        for k, lo in enumerate(range(0, n, chunk)):
            hi = min(lo + chunk, n)
            b = hi - lo
            z0 = z[lo:hi].detach().to(device)
            zc = z0.clone()
            cc = None if c is None else c[lo:hi].to(device)

            # Scores are logits, taken from the forward pass that gives the step's loss.
            logits_seen: list[Tensor] = []

            def objective(zg: Tensor, b: int = b, cc: Optional[Tensor] = cc, seen: list = logits_seen) -> Tensor:
                logits = _logits(D, _generate(G, zg, cc), b, cc)
                seen.append(logits.detach().sum(dtype=torch.float64))
                return objective_of(logits)

            ifgsm(objective, zc, steps=steps,
                  step_size=_per_chunk(step_size, n, lo, hi, device, "step_size"),
                  anchor=None if radius is None else z0,
                  radius=_per_chunk(radius, n, lo, hi, device, "radius"),
                  bounds=bounds, impl=impl, on_step=lambda i, v: bar.update(1),
                  where=f" of chunk {k} (latents {lo}:{hi})")
            with torch.no_grad():
                logits_seen.append(_logits(D, _generate(G, zc, cc), b, cc).sum(dtype=torch.float64))
            score_sums += torch.stack(logits_seen)
            out[lo:hi] = zc.to(out.device)
    return Refined(out, (score_sums / max(n, 1)).cpu())


def hard_pair(
    G: Callable[..., Tensor],
    z0: Tensor,
    *,
    c: Optional[Tensor] = None,
    steps: int,
    step_size: Union[Tensor, Number],
    radius: Union[Tensor, Number],
    inverse: bool = False,
    bounds: Optional[tuple[Number, Number]] = None,
    generator: Optional[torch.Generator] = None,
    impl: str = "auto",
) -> Tensor:
    """Eq. 8: ``z* = argmin_{‖z − z₀‖∞ ≤ r} d_I(G(c, z₀), G(c, z)) / d_z(z₀, z)`` by I-FGSM.

    The search starts at a uniform random point of the ball (at z₀ the ratio is 0/0) and
    takes ``steps`` sign steps; ``inverse`` maximises the ratio instead (the paper's
    "Eq. 8-inv"). Distances are mean absolute differences per sample
    (:func:`latentx.losses.mode_seeking_ratio`). G's parameter gradients are off during the
    search; its train/eval mode is left as it is (AdvLatGAN-div searches mid-training).

    Args:
        G: generator, called as ``G(z)`` or, with ``c``, ``G(z, c)``.
        z0: latents [B, ...]. c: G's class input (integer indices [B] or floating-point
            conditions [B, ...], see :func:`check_classes`), the same for z₀ and z; or None.
        steps, step_size, radius: I-FGSM steps, ε and the ℓ∞ radius r (numbers or [B]);
            r > 0 (at r = 0 the only candidate is z₀, where the ratio is 0/0).
        bounds: optional (lower, upper) box.
        generator: RNG for the random start.

    Returns:
        z* [B, ...], z0's shape, dtype and device; ‖z* − z₀‖∞ ≤ r.
    """
    if radius is None:
        raise ValueError("radius is required: eq. 8 searches inside an l-inf ball")
    if not isinstance(z0, Tensor) or not z0.is_floating_point() or z0.dim() < 1:
        raise TypeError(f"z0 must be a floating-point tensor [B, ...], got "
                        f"{z0.dtype if isinstance(z0, Tensor) else type(z0).__name__}")
    _check_int("steps", steps, 0)
    if c is not None:
        check_classes(c, z0.shape[0])
    _check_amount("step_size", step_size, z0.shape[0])
    # r = 0 leaves z = z0, where the ratio is 0/0: refuse it rather than report a NaN loss.
    _check_amount("radius", radius, z0.shape[0], positive=True)
    _check_bounds(bounds)
    _check_impl(impl)
    run = lambda z: _generate(G, z, c)  # noqa: E731
    z0 = z0.detach()
    r = radius.reshape((-1,) + (1,) * (z0.dim() - 1)) if isinstance(radius, Tensor) else radius
    noise = torch.rand(z0.shape, generator=generator, dtype=z0.dtype, device="cpu").to(z0.device)
    z = z0 + (2 * noise - 1) * r
    if bounds is not None:
        z.clamp_(bounds[0], bounds[1])
    modules = [G] if isinstance(G, nn.Module) else []
    with frozen(modules, eval_mode=False):
        with torch.no_grad():
            x0 = run(z0)
        ifgsm(lambda zg: losses.mode_seeking_ratio(x0, run(zg), z0, zg), z, steps=steps,
              step_size=step_size, anchor=z0, radius=radius, bounds=bounds, ascend=inverse,
              impl=impl, where=" of the eq. 8 search")
    return z


def sample(
    G: nn.Module,
    D: Optional[nn.Module],
    z: Tensor,
    *,
    c: Optional[Tensor] = None,
    steps: int = 0,
    step_size: Union[Tensor, Number, None] = None,
    radius: Union[Tensor, Number, None] = None,
    bounds: Optional[tuple[Number, Number]] = None,
    loss: Union[str, LossFn] = "log1m",
    batch_size: Optional[int] = None,
    progress: bool = True,
    impl: str = "auto",
) -> Sampled:
    """Samples of a trained generator; with ``steps > 0`` through AdvLatGAN-z (the "+" variants).

    ``sample(G, D, z)`` is ``G(z)`` in eval mode, chunk by chunk. ``sample(G, D, z, steps=n,
    step_size=ε, radius=r)`` first refines z by :func:`refine` (eq. 5, 6; G and D frozen),
    then generates from the refined latents: on a vanilla model that is AdvLatGAN-z, on an
    AdvLatGAN-qua / -div model it is AdvLatGAN-qua+ / -div+ (seed 001, Sec. 4.1 iv–v).

    Args:
        G: generator, ``G(z)`` or, with ``c``, ``G(z, c)``.
        D: discriminator (``D(x)`` / ``D(x, c)``); needed only when ``steps > 0``.
        z: latents z₀ [N, ...] on any device; not modified.
        c: classes for a conditional pair (integer [N] or floating-point [N, ...]), or None.
        steps, step_size, radius, bounds, loss, impl: AdvLatGAN-z's settings, as in
            :func:`refine`; ``steps=0`` samples z as it is.
        batch_size: latents per chunk, for the refinement and for generating; None: all.
        progress: progress bar of the refinement.

    Returns:
        :class:`Sampled` ``(x, z, scores)``: samples [N, ...] on z's device, the latents they
        come from (refined, or ``z`` itself when ``steps=0``), and refine's [steps + 1] mean
        D logits (None when ``steps=0``).
    """
    n = _check_sampling(z, c, steps, batch_size, G=G)
    scores = None
    if steps > 0:
        if D is None:
            raise ValueError("D is required when steps > 0 (AdvLatGAN-z scores samples with D)")
        if step_size is None:
            raise ValueError("step_size is required when steps > 0")
        z, scores = refine(G, D, z, c=c, steps=steps, step_size=step_size, radius=radius, bounds=bounds,
                           loss=loss, batch_size=batch_size, progress=progress, impl=impl)
    device = model_device(G, z.device)
    chunk = max(n if batch_size is None else batch_size, 1)
    parts = []
    with frozen([G], eval_mode=True), torch.no_grad():
        # N = 0 still runs G once, on the empty batch: that gives x its shape.
        for lo in range(0, max(n, 1), chunk):
            cc = None if c is None else c[lo:lo + chunk].to(device)
            parts.append(_generate(G, z[lo:lo + chunk].detach().to(device), cc).to(z.device))
    return Sampled(torch.cat(parts), z, scores)


# --- training: AdvLatGAN-qua (Alg. 1) and AdvLatGAN-div (Alg. 2) --------------------------


def _real_batch(real: Callable[[int], object], m: int, num_classes: Optional[int]) -> tuple[Tensor, Optional[Tensor]]:
    """``real(m)``: samples [m, ...], or with ``num_classes`` the pair (samples, classes [m])."""
    out = real(m)
    if num_classes is None:
        return out, None
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise TypeError(f"with num_classes, real(m) must return (x, c): samples and their classes, "
                        f"got {type(out).__name__}")
    x, c = out
    check_classes(c, m, name="the classes real(m) returns")
    if c.is_floating_point():
        raise TypeError(f"the classes real(m) returns must be integer class indices [{m}], got {c.dtype}")
    if m and not (0 <= int(c.min()) and int(c.max()) < num_classes):
        raise ValueError(f"the classes real(m) returns must lie in [0, num_classes={num_classes}), "
                         f"got {int(c.min())}..{int(c.max())}")
    return x, c


def train_step(
    G: nn.Module,
    D: nn.Module,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    real: Callable[[int], object],
    *,
    z_dim: int,
    batch_size: int,
    method: str = "qua",
    latent_steps: int = 0,
    step_size: Number = 0.01,
    radius: Optional[Number] = None,
    bounds: Optional[tuple[Number, Number]] = None,
    loss: str = "nonsaturating",
    d_steps: int = 1,
    lambda_ms: float = 1.0,
    gp_weight: float = 10.0,
    inverse: bool = False,
    num_classes: Optional[int] = None,
) -> dict[str, float]:
    """One generator iteration of AdvLatGAN-qua (Alg. 1) or AdvLatGAN-div (Alg. 2).

    * ``"qua"``: each of the ``d_steps`` D updates uses fake samples from latents moved by
      ``latent_steps`` I-FGSM steps of eq. 5 (G and D frozen meanwhile); the G update uses
      fresh latents.
    * ``"div"``: D updates are vanilla; the G update draws z₀, finds its hard partner z_t by
      eq. 8 (:func:`hard_pair`, ``latent_steps`` steps in the ball of ``radius``) and
      minimises G's loss on both plus ``lambda_ms`` × MSGAN's mode-seeking loss on the pair.
      With ``latent_steps=0`` the partner is an independent draw: plain MSGAN.
      ``inverse=True`` searches the partner by eq. 8-inv instead (the ratio maximised: a
      pair whose generations are already apart), the paper's contrast in Table 1 / Fig. 5.

    ``latent_steps=0`` with ``"qua"`` is the vanilla GAN.

    Class-conditional pairs (``num_classes`` set): G is called ``G(z, c)`` and D ``D(x, c)``;
    ``real(m)`` returns ``(x, c)`` with integer classes c [m] in [0, num_classes). As in
    Alg. 2, a D update generates its fakes with the real batch's classes (lines 5–6; their
    eq. 5 latent steps too), the G update draws classes uniformly (line 9), and a -div pair
    (z₀, z_t) shares its class (eq. 8's G(c, z₀), G(c, z)).

    Args:
        G: [B, z_dim] → samples. D: samples → [B] or [B, 1] logits.
        opt_g, opt_d: their optimizers.
        real: ``real(m)`` returns m real samples on the models' device (with
            ``num_classes``: samples and their classes).
        z_dim: latent size; latents are N(0, I) [batch_size, z_dim].
        loss: GAN loss kind (:data:`latentx.losses.GAN_LOSSES`); its G loss also drives
            the eq. 5 latent steps. ``"wgan"`` adds the gradient penalty (``gp_weight``).
        inverse: eq. 8-inv for ``"div"`` (needs ``latent_steps > 0``).
        num_classes: number of classes of a conditional pair; None: unconditional.

    Returns:
        ``{"loss_d", "loss_g", "score_real", "score_fake"}`` (last D step; mean logits),
        plus ``"ms_ratio"`` for ``"div"`` (mean eq. 3 ratio d_I / d_z of the G step's pairs
        before the update: low for hard pairs, high for eq. 8-inv's).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    _check_int("z_dim", z_dim, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("latent_steps", latent_steps, 0)
    _check_int("d_steps", d_steps, 1)
    if num_classes is not None:
        _check_int("num_classes", num_classes, 1)
    if not isinstance(inverse, bool):
        raise TypeError(f"inverse must be a bool, got {type(inverse).__name__}")
    if inverse and method != "div":
        raise ValueError(f"inverse=True is eq. 8-inv, a method='div' option; got method={method!r}")
    if inverse and latent_steps == 0:
        raise ValueError("inverse=True needs latent_steps > 0 (with 0 the partner is a random draw, no search)")
    if method == "div" and latent_steps > 0 and radius is None:
        raise ValueError("method='div' with latent_steps > 0 needs a radius (the eq. 8 ball)")
    device = model_device(G, torch.device("cpu"))
    g_objective = score_loss(loss)
    stats: dict[str, float] = {}

    for _ in range(d_steps):
        z = torch.randn(batch_size, z_dim, device=device)
        # Drawn before the latent steps: the eq. 5 steps of a conditional pair need the classes.
        x, c = _real_batch(real, batch_size, num_classes)
        if method == "qua" and latent_steps > 0:
            with frozen([G, D], eval_mode=False):
                ifgsm(lambda zg: g_objective(_logits(D, _generate(G, zg, c), batch_size, c)), z,
                      steps=latent_steps, step_size=step_size, anchor=None if radius is None else z.clone(),
                      radius=radius, bounds=bounds, where=" of a D step's latents")
        with torch.no_grad():
            fake = _generate(G, z, c)
        s_real, s_fake = _logits(D, x, batch_size, c), _logits(D, fake, batch_size, c)
        loss_d = losses.discriminator_loss(s_real, s_fake, loss)
        if loss == "wgan":
            critic = D if c is None else (lambda v: D(v, c))
            loss_d = loss_d + losses.gradient_penalty(critic, x, fake, gp_weight)
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        stats.update(loss_d=loss_d.item(), score_real=s_real.mean().item(), score_fake=s_fake.mean().item())

    z = torch.randn(batch_size, z_dim, device=device)
    c = None if num_classes is None else torch.randint(num_classes, (batch_size,), device=device)
    with frozen([D], eval_mode=False):
        if method == "qua":
            loss_g = losses.generator_loss(_logits(D, _generate(G, z, c), batch_size, c), loss)
        else:
            if latent_steps > 0:
                partner = hard_pair(G, z, c=c, steps=latent_steps, step_size=step_size, radius=radius,
                                    inverse=inverse, bounds=bounds)
            else:
                partner = torch.randn_like(z)
            c_pair = None if c is None else torch.cat([c, c])
            x_pair = _generate(G, torch.cat([z, partner]), c_pair)
            loss_g = losses.generator_loss(_logits(D, x_pair, 2 * batch_size, c_pair), loss)
            x0, x1 = x_pair[:batch_size], x_pair[batch_size:]
            loss_g = loss_g + lambda_ms * losses.mode_seeking_loss(x0, x1, z, partner)
            stats["ms_ratio"] = losses.mode_seeking_ratio(x0.detach(), x1.detach(), z, partner).mean().item()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
    stats["loss_g"] = loss_g.item()
    return stats


def train(
    G: nn.Module,
    D: nn.Module,
    real: Callable[[int], object],
    *,
    iterations: int,
    z_dim: int,
    batch_size: int = 64,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    progress: bool = True,
    **step_kwargs,
) -> list[dict[str, float]]:
    """Train G and D with Adam for ``iterations`` generator iterations of :func:`train_step`.

    ``step_kwargs`` go to :func:`train_step` (``method``, ``latent_steps``, ``step_size``,
    ``radius``, ``loss``, ``d_steps``, ``lambda_ms``, ``inverse`` for -div with eq. 8-inv,
    ``num_classes`` for a conditional pair whose ``real(m)`` returns ``(x, c)``, ...).
    Returns one stats dict per iteration.
    """
    _check_int("iterations", iterations, 0)
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=betas)
    G.train()
    D.train()
    history = []
    bar = tqdm(range(iterations), disable=not progress, desc=f"train {step_kwargs.get('method', 'qua')}{'-inv' if step_kwargs.get('inverse') else ''}")
    for _ in bar:
        history.append(train_step(G, D, opt_g, opt_d, real, z_dim=z_dim, batch_size=batch_size, **step_kwargs))
        bar.set_postfix(loss_d=f"{history[-1]['loss_d']:.3f}", loss_g=f"{history[-1]['loss_g']:.3f}", refresh=False)
    return history
