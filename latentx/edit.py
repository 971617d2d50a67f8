"""Attribute editing by moving latents (seed 000; SPEC C4): InterFaceGAN, GANSpace, SGF and the
conjugate-gradient method, with the MDS metric.

Notation: G the generator (flat z [N, d] → images), Φ the attribute model (images → [N, M] in
[0, 1]), c = Φ(G(z)), F the auxiliary mapping Z × C → Z with F(z, Φ(z)) ≈ z (eq. 1).

* :func:`sample_bank` — z and Φ(G(z)) for n latents, chunked, saved and resumable.
* :func:`interfacegan_boundaries` / :func:`conditional_boundary` / :func:`linear_edit` —
  InterFaceGAN (genforce/interfacegan ``utils/manipulator.py``): one linear SVM per attribute
  on the extremes, the unit normal; conditional boundaries; moves to signed distances.
* :func:`ganspace_directions` / :func:`choose_components` — GANSpace (harskish/ganspace):
  PCA on z, or on a layer's activations regressed back to z.
* :class:`AuxiliaryMapping` / :func:`train_mapping` — F of Fig. 2.
* :func:`sgf` — the surrogate gradient field (Li et al., CVPR 2021) with Neumann corrections.
* :func:`conjugate_gradient` — seed 000 Algorithm 1.
* :func:`mds` — the manipulation-disentanglement score (seed 000 §4.2.1, eq. 4).

Choices the papers leave open, made here (EDITING.md lists the gaps):

* **Fig. 2's blocks.** Inputs (Z, C) are concatenated; the latent is handled as a 1×1 map with
  z_dim channels, the way a DCGAN takes it ([N, d, 1, 1]), so the figure's Conv2d has kernel 1
  (a larger kernel on a 1×1 map reduces to its centre tap). Three blocks Conv2d → Swish →
  GroupNorm, width 512 (the SGF repositories' width for 512-d latents), 32 groups (Wu & He's
  default; fewer when the width needs it). Filled from SGF's public implementations
  (KYM384/SGF, hyungkwonko/sgf-pytorch), which condition every block on c (AdaIN): here c is
  concatenated to every block's input, and F = z + head(h) (a residual: F only has to learn
  the correction). The head is initialised like every layer (not to zero: with a zero head and
  the plain loss F would stay exactly the identity). The figure's third input "N" is read as
  noise: the denoiser remedy below feeds F a noisy z during training. The convolutions run as
  matrix products (the same weights; a 1×1 convolution of a 1×1 map is one).
* **F ignoring c.** F(z, c) = z solves the papers' loss ‖F(z, Φ(z)) − z‖² exactly, and then the
  field is zero. :func:`train_mapping` trains, by default, the denoiser
  F(z + σε, Φ(z)) → z (σ = ``noise`` = 0.5): to undo the noise F must use c.
  ``noise=0`` is the papers' loss (tests/test_edit.py measures both).
* **The field.** δz = F(z, c + δc) − F(z, c) (= J_c δc to first order) and m Neumann
  corrections δz ← u + F(z + δz, c) − F(z, c) with u the first term, i.e. the series
  (I − J_z)⁻¹ J_c δc = Σ_k J_zᵏ u by finite differences of F: no Jacobian is ever formed
  (the public SGF code builds one per latent). m = 1 matches EDITING.md's update (for m ≥ 2
  EDITING.md's δz ← δz + … would not be the Neumann series; this is). c + δc is not clipped
  to [0, 1]. Cost per step: one G, one Φ and 2 + m calls of F, only for unconverged samples.
* **SGF** (EDITING.md): δc = λ(c₁ − Φ(z₀)) once; z ← z + δz; c ← Φ(z) (closed loop).
* **CG, Algorithm 1.** Line 7's gradient is the surrogate field g_i at z_i with
  δc_i = α(c₁ − Φ(z_i)) (so δc is used, recomputed every step: closed loop);
  Fletcher–Reeves β_i = ‖g_i‖² / ‖g_{i−1}‖², β₁ = 0, capped at ``beta_max`` = 1; restart
  (β = 0) when g_i · d_{i−1} ≤ 0 (the new field turns against the direction) or every
  ``restart_every`` steps (default z_dim: Powell's every-n rule); d_i = g_i + β_i d_{i−1};
  z_{i+1} = z_i + η d_i with η = 1 (g is already a displacement, so the step needs no scale;
  line 10's α is not reused as a step). Default α = 1.
* **Convergence** ("c close to c₁", both methods). A sample converges when every targeted
  attribute has reached its goal: come within ``tol`` (default 0.01) of it or crossed it in the
  direction of travel (sign(goal − c₀)·(c − goal) ≥ −tol); a sample already there converges at
  once. The tolerance is needed: CG's closed loop (δc_i ∝ c₁ − c_i) approaches the goal
  geometrically and need not cross it; ``tol=0`` is the strict crossing rule.
  Converged samples stop moving (per-sample masks; only the others are evaluated).
* **MDS.** At each strength s: accuracy = share of all N samples whose target attribute has
  reached the goal (the rule above); disentanglement = (1/N) Σ_i (1 − n_i/(M − 1)) over all
  N samples (not only the successes), n_i the other attributes whose score moved by more
  than ``threshold`` = 0.5 from before the edit. The curve's points are ordered by accuracy
  and anchored at (accuracy 0, disentanglement 1); beyond the last accuracy the curve counts
  0 (``close="zero"``: a method that never reaches its goal is not credited for it) or stays
  flat at its last value (``close="flat"``); MDS is the trapezoid area. The 0.5 threshold
  saturates on probabilities, so a stricter one (``strict_threshold`` = 0.25) is reported
  too.
* **Latent noise.** The bank's z ~ N(0, I) is drawn in fixed blocks of 4,096 rows, block b from
  a ``torch.Generator`` seeded with a hash of (seed, b): a latent does not depend on
  ``chunk_size`` or on where a run was resumed.
* **SVMs.** InterFaceGAN's SVC(kernel="linear", C=1) is solved in the primal, all attributes at
  once, with batched Newton steps (Chapelle 2007, "Training a support vector machine in the
  primal"): the hinge through a Huber-smoothed hinge whose width shrinks to 1e-3, or the
  squared hinge exactly. The intercept is not regularised (as in SVC).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from latentx._atomic import atomic_torch_save

__all__ = [
    "SampleBank", "sample_bank", "Boundaries", "interfacegan_boundaries", "conditional_boundary",
    "linear_edit", "interfacegan_training_sets", "Directions", "ganspace_directions", "choose_components",
    "AuxiliaryMapping", "train_mapping", "EditResult", "sgf", "conjugate_gradient", "linear_path", "MDSResult", "mds",
    "bank_latents", "fit_linear_svms", "surrogate_field", "mds_area", "save_atomic",
]

Goal = Union[float, Tensor]
_NOISE_BLOCK = 4096
_BANK_KIND = "latentx.edit.SampleBank"
_MAPPING_KIND = "latentx.edit.AuxiliaryMapping"
_BOUNDARIES_KIND = "latentx.edit.Boundaries"


# --- argument checks and small helpers --------------------------------------------------------

def _z_dim(generator) -> int:
    d = getattr(generator, "z_dim", None)
    if not isinstance(d, int) or isinstance(d, bool) or d < 1:
        raise ValueError(f"generator must have a positive integer attribute z_dim, got {d!r}")
    return d


def _check_latents(z, name: str, z_dim: Optional[int] = None) -> Tensor:
    if not isinstance(z, Tensor) or not z.is_floating_point() or z.dim() != 2:
        shape = list(z.shape) if isinstance(z, Tensor) else type(z).__name__
        raise ValueError(f"{name} must be a floating-point tensor [N, d], got {shape}")
    if z_dim is not None and z.shape[1] != z_dim:
        raise ValueError(f"{name}: latent size {z.shape[1]} does not match the generator's z_dim={z_dim}")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return z


def _check_attributes(c, name: str, n: Optional[int] = None, m: Optional[int] = None) -> Tensor:
    if not isinstance(c, Tensor) or not c.is_floating_point() or c.dim() != 2:
        shape = list(c.shape) if isinstance(c, Tensor) else type(c).__name__
        raise ValueError(f"{name} must be a floating-point tensor [N, M], got {shape}")
    if (n is not None and c.shape[0] != n) or (m is not None and c.shape[1] != m):
        raise ValueError(f"{name} must be [{n}, {m}], got {list(c.shape)}")
    if not bool(torch.isfinite(c).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return c


def _names_of(phi, m: Optional[int] = None) -> list[str]:
    names = getattr(phi, "names", None)
    if names is None:
        if m is None:
            raise ValueError("phi must have a .names attribute (a list of attribute names)")
        return [str(j) for j in range(m)]
    names = [str(s) for s in names]
    if m is not None and len(names) != m:
        raise ValueError(f"phi.names lists {len(names)} names but phi returns {m} attributes")
    return names


def _index(names: Sequence[str], key: Union[int, str], what: str) -> int:
    if isinstance(key, bool):
        raise ValueError(f"{what}: {key!r} is not an attribute name or index")
    if isinstance(key, int):
        if not 0 <= key < len(names):
            raise ValueError(f"{what}: attribute index {key} is outside [0, {len(names)})")
        return key
    if key not in names:
        raise ValueError(f"{what}: unknown attribute {key!r}; known: {list(names)}")
    return list(names).index(key)


def _device_of(obj, fallback=None) -> torch.device:
    if isinstance(obj, nn.Module):
        for t in obj.parameters():
            return t.device
        for t in obj.buffers():
            return t.device
    return torch.device(fallback) if fallback is not None else torch.device("cpu")


@contextlib.contextmanager
def _eval_mode(*objs) -> Iterator[None]:
    """Eval mode for the modules among ``objs`` during the block; their flags restored after."""
    mods = [m for m in objs if isinstance(m, nn.Module)]
    flags = [[sub.training for sub in m.modules()] for m in mods]
    for m in mods:
        m.eval()
    try:
        yield
    finally:
        for m, fl in zip(mods, flags):
            for sub, f in zip(m.modules(), fl):
                sub.training = f


def _attributes(generator, phi, z: Tensor, m: Optional[int] = None) -> Tensor:
    """Φ(G(z)) [B, M] float32, checked: finite and in [0, 1]."""
    c = phi(generator(z))
    if not isinstance(c, Tensor) or c.dim() != 2 or c.shape[0] != z.shape[0] or (m is not None and c.shape[1] != m):
        shape = list(c.shape) if isinstance(c, Tensor) else type(c).__name__
        raise ValueError(f"phi must return attributes [{z.shape[0]}, M{'' if m is None else '=' + str(m)}], got {shape}")
    c = c.float()
    if not bool(torch.isfinite(c).all()):
        raise ValueError("phi returned non-finite attributes")
    if not bool(((c >= -1e-6) & (c <= 1 + 1e-6)).all()):
        raise ValueError("phi must return attributes in [0, 1]; got values outside")
    return c


# ``torch.save`` atomically and durably (temporary file, fsync, rename, folder fsync; removed on
# failure): the one implementation in latentx._atomic, kept here under its old name.
save_atomic = atomic_torch_save


def _progress(total: int, progress: bool, desc: str):
    return tqdm(total=total, disable=not progress, desc=desc, leave=False)


# --- sample bank --------------------------------------------------------------------------------

@dataclass
class SampleBank:
    """Latents and their attributes: ``z`` [n, d] float32 (CPU), ``attributes`` [n, M] float32
    (CPU) in [0, 1], ``names`` the M attribute names; ``seed`` the noise seed when known."""

    z: Tensor
    attributes: Tensor
    names: list
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        _check_latents(self.z, "SampleBank.z")
        _check_attributes(self.attributes, "SampleBank.attributes", self.z.shape[0])
        if len(self.names) != self.attributes.shape[1]:
            raise ValueError(f"SampleBank.names lists {len(self.names)} names for {self.attributes.shape[1]} attributes")

    def __len__(self) -> int:
        return int(self.z.shape[0])

    def index(self, name: str) -> int:
        return _index(self.names, name, "SampleBank.index")

    def save(self, path: str) -> None:
        save_atomic({"kind": _BANK_KIND, "z": self.z.float().cpu(), "attributes": self.attributes.float().cpu(),
                      "names": list(self.names), "seed": self.seed, "n": len(self), "done": len(self)}, path)

    @classmethod
    def load(cls, path: str) -> "SampleBank":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("kind") != _BANK_KIND:
            raise ValueError(f"SampleBank.load: {path} is not a saved sample bank")
        if state["done"] != state["n"]:
            raise ValueError(f"SampleBank.load: {path} is unfinished ({state['done']} of {state['n']} latents); "
                             "rerun sample_bank with this path to finish it")
        return cls(state["z"], state["attributes"], list(state["names"]), state["seed"])


def _block_seed(seed: int, block: int) -> int:
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), block]).generate_state(1, dtype=np.uint64)[0] >> 1)


def bank_latents(seed: int, lo: int, hi: int, d: int) -> Tensor:
    """Rows [lo, hi) of the bank's noise, z ~ N(0, I) [hi − lo, d] float32 (CPU): fixed blocks
    of 4,096 rows, block b drawn from a generator seeded with a hash of (seed, b)."""
    out = []
    for b in range(lo // _NOISE_BLOCK, (hi - 1) // _NOISE_BLOCK + 1):
        g = torch.Generator().manual_seed(_block_seed(seed, b))
        block = torch.randn(_NOISE_BLOCK, d, generator=g)
        out.append(block[max(lo - b * _NOISE_BLOCK, 0):min(hi - b * _NOISE_BLOCK, _NOISE_BLOCK)])
    return torch.cat(out) if out else torch.zeros(0, d)


@torch.no_grad()
def sample_bank(generator, phi, n: int, *, seed: int = 0, chunk_size: int = 256, path: Optional[str] = None,
                device=None, progress: bool = True) -> SampleBank:
    """z ~ N(0, I) [n, d] and c = Φ(G(z)) [n, M], in chunks of ``chunk_size`` latents.

    With ``path``, the bank so far is saved (atomically: written aside, then renamed) after each
    chunk, and a rerun with the same path resumes where it stopped; the saved seed, n, z_dim
    and names must match. Latents do not depend on ``chunk_size`` (see the module docstring).

    Args:
        generator: z [B, d] → images [B, 3, H, W]; has ``z_dim``.
        phi: images → attributes [B, M] in [0, 1]; has ``names``.
        device: where G and Φ run; default the generator's device (CPU if it has none).
    """
    d = _z_dim(generator)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    device = _device_of(generator, device) if device is None else torch.device(device)
    names = _names_of(phi) if getattr(phi, "names", None) is not None else None
    z_done, c_done = torch.zeros(0, d), None
    if path is not None and os.path.exists(path):
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("kind") != _BANK_KIND:
            raise ValueError(f"path: {path} exists but is not a saved sample bank")
        saved = {"seed": state["seed"], "n": state["n"], "z_dim": state["z"].shape[1]}
        wanted = {"seed": seed, "n": n, "z_dim": d}
        for k in saved:
            if saved[k] != wanted[k]:
                raise ValueError(f"path: {path} holds a bank with {k}={saved[k]}, this call asks for {k}={wanted[k]}; "
                                 "use another path or delete it")
        if names is not None and list(state["names"]) != names:
            raise ValueError(f"path: {path} holds attributes {list(state['names'])}, phi has {names}")
        names = list(state["names"])
        z_done, c_done = state["z"][:state["done"]], state["attributes"][:state["done"]]
    done = z_done.shape[0]
    zs, cs = [z_done], ([] if c_done is None else [c_done])
    with _eval_mode(generator, phi), _progress(n, progress, "sample bank") as bar:
        bar.update(done)
        while done < n:
            hi = min(done + chunk_size, n)
            z = bank_latents(seed, done, hi, d)
            c = _attributes(generator, phi, z.to(device), None if not cs else cs[0].shape[1]).cpu()
            if names is None:
                names = _names_of(phi, c.shape[1])
            elif len(names) != c.shape[1]:
                raise ValueError(f"phi returned {c.shape[1]} attributes but names {names} has {len(names)}")
            zs.append(z)
            cs.append(c)
            done = hi
            if path is not None:
                save_atomic({"kind": _BANK_KIND, "z": torch.cat(zs), "attributes": torch.cat(cs), "names": names,
                              "seed": seed, "n": n, "done": done}, path)
            bar.update(hi - bar.n)
    return SampleBank(torch.cat(zs), torch.cat(cs), list(names), seed)


# --- InterFaceGAN -------------------------------------------------------------------------------

@dataclass
class Boundaries:
    """InterFaceGAN boundaries: ``normals`` [M, d] unit, ``names``, ``accuracy`` [M] (held-out
    accuracy of each SVM; NaN with no held-out samples), ``offsets`` [M] (intercept / ‖w‖: the
    signed distance of z to boundary j is normals[j]·z + offsets[j])."""

    normals: Tensor
    names: list
    accuracy: Tensor
    offsets: Optional[Tensor] = None

    def index(self, name: str) -> int:
        return _index(self.names, name, "Boundaries.index")

    def __getitem__(self, name: str) -> Tensor:
        return self.normals[self.index(name)]

    def save(self, path) -> None:
        save_atomic({"kind": _BOUNDARIES_KIND, "normals": self.normals.float().cpu(), "names": list(self.names),
                      "accuracy": self.accuracy.float().cpu(),
                      "offsets": None if self.offsets is None else self.offsets.float().cpu()}, path)

    @classmethod
    def load(cls, path) -> "Boundaries":
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("kind") != _BOUNDARIES_KIND:
            raise ValueError(f"Boundaries.load: {path} is not saved InterFaceGAN boundaries")
        return cls(state["normals"], list(state["names"]), state["accuracy"], state["offsets"])


def fit_linear_svms(x: Tensor, y: Tensor, *, C: float = 1.0, loss: str = "hinge", max_iter: int = 50,
                    tol: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Linear SVMs, one per problem, all at once: min_w,b ½‖w‖² + C Σ_i ℓ(y_i(w·x_i + b)).

    Batched Newton steps in the primal with a backtracking line search (Chapelle 2007).
    ``loss="hinge"`` (SVC(kernel="linear")) through a Huber-smoothed hinge of width h = 0.5 →
    1e-3 (each width warm-starts the next); ``"squared_hinge"`` exactly (finite Newton).

    Args:
        x: [P, T, d] training points of P problems; y: [P, T] labels ±1.
    Returns:
        (w [P, d], b [P]) in x's dtype.
    """
    if loss not in ("hinge", "squared_hinge"):
        raise ValueError(f"loss must be 'hinge' or 'squared_hinge', got {loss!r}")
    if not (C > 0):
        raise ValueError(f"C must be > 0, got {C!r}")
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    p, t, d = x.shape
    xt = torch.cat([x.to(dtype), torch.ones(p, t, 1, dtype=dtype, device=x.device)], -1)  # [P, T, d+1]
    yy = y.to(dtype)
    reg = torch.ones(d + 1, dtype=dtype, device=x.device)
    reg[-1] = 0.0  # the intercept is not regularised
    # A tiny ridge keeps the Hessian invertible when no point is in the loss's curved part.
    ridge = 1e-9 * C * t + 1e-12
    theta = torch.zeros(p, d + 1, dtype=dtype, device=x.device)

    def loss_terms(m: Tensor, h: float):
        if loss == "squared_hinge":
            r = (1 - m).clamp_min(0)
            return r * r, -2 * r, 2.0 * (m < 1).to(dtype)
        lin, quad = m < 1 - h, (m >= 1 - h) & (m <= 1 + h)
        v = torch.where(lin, 1 - m, torch.where(quad, (1 + h - m) ** 2 / (4 * h), torch.zeros_like(m)))
        g = torch.where(lin, -torch.ones_like(m), torch.where(quad, -(1 + h - m) / (2 * h), torch.zeros_like(m)))
        return v, g, quad.to(dtype) / (2 * h)

    def objective(th: Tensor, m: Tensor, h: float) -> Tensor:
        """The primal objective at θ [P, d+1] whose margins y·(x·θ) are m [P, T]."""
        return 0.5 * (reg * th * th).sum(-1) + C * loss_terms(m, h)[0].sum(-1)

    widths = [0.0] if loss == "squared_hinge" else [0.5, 0.1, 0.02, 0.005, 1e-3]
    for h in widths:
        for _ in range(max_iter):
            m = yy * torch.einsum("ptd,pd->pt", xt, theta)
            _, g1, g2 = loss_terms(m, h)
            grad = reg * theta + C * torch.einsum("pt,ptd->pd", g1 * yy, xt)
            hess = torch.diag_embed(reg + ridge) + C * torch.bmm((xt * g2[..., None]).transpose(1, 2), xt)
            step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
            f0 = objective(theta, m, h)
            slope = (grad * step).sum(-1)
            # Margins are linear along the step: each backtracking trial costs no product with x.
            dm = yy * torch.einsum("ptd,pd->pt", xt, step)
            lr = torch.ones(p, dtype=dtype, device=x.device)
            for _ in range(40):
                ok = objective(theta - lr[:, None] * step, m - lr[:, None] * dm, h) <= f0 - 1e-4 * lr * slope
                if bool(ok.all()):
                    break
                lr = torch.where(ok, lr, lr / 2)
            theta = theta - lr[:, None] * step
            if bool((slope.abs() <= tol * (1 + f0.abs())).all()):
                break
    return theta[:, :d].to(x.dtype), theta[:, d].to(x.dtype)


def _chosen_count(n: int, ratio: float) -> int:
    if not (ratio > 0):
        raise ValueError(f"ratio must be > 0 (a share ≤ 1 or a count > 1), got {ratio!r}")
    k = int(n * ratio) if ratio <= 1 else int(ratio)
    return min(k, n // 2)


def interfacegan_training_sets(bank: SampleBank, attributes: Optional[Sequence[str]] = None, *,
                               ratio: float = 0.02, train_fraction: float = 0.7, seed: int = 0):
    """InterFaceGAN's training and held-out sets (``train_boundary``'s selection), per attribute.

    For attribute j: sort the bank by c_j; the top and the bottom k = ⌊n·ratio⌋ latents
    (``ratio`` > 1 is a count) are positives (+1) and negatives (−1); each side is shuffled
    (seeded by (seed, j), so a subset of attributes gets the same sets) and its first
    ⌊k·train_fraction⌋ train, the rest are held out.

    Returns (names, x_train [P, T, d], y_train [P, T], x_held [P, V, d], y_held [P, V]) for the
    P attributes, T = 2⌊k·train_fraction⌋, V = 2k − T.
    """
    if not isinstance(bank, SampleBank):
        raise ValueError(f"bank must be a SampleBank, got {type(bank).__name__}")
    if not (0 < train_fraction <= 1):
        raise ValueError(f"train_fraction must lie in (0, 1], got {train_fraction!r}")
    names = list(bank.names) if attributes is None else list(attributes)
    if not names:
        raise ValueError("attributes must name at least one attribute")
    cols = [_index(bank.names, a, "attributes") for a in names]
    n = bank.z.shape[0]
    k = _chosen_count(n, ratio)
    k_train = int(k * train_fraction)
    if k_train < 1:
        raise ValueError(f"ratio={ratio} of n={n} latents leaves {k} per side and {k_train} for training; "
                         "use a larger bank or ratio")
    labels = lambda m: torch.cat([torch.ones(m), -torch.ones(m)])  # noqa: E731
    xs_tr, xs_va = [], []
    for j in cols:
        gen = torch.Generator().manual_seed(_block_seed(seed, j))
        order = torch.argsort(bank.attributes[:, j], descending=True, stable=True)
        pos = order[:k][torch.randperm(k, generator=gen)]
        neg = order[n - k:][torch.randperm(k, generator=gen)]
        xs_tr.append(bank.z[torch.cat([pos[:k_train], neg[:k_train]])])
        xs_va.append(bank.z[torch.cat([pos[k_train:], neg[k_train:]])])
    p = len(cols)
    return (names, torch.stack(xs_tr), labels(k_train).expand(p, -1), torch.stack(xs_va),
            labels(k - k_train).expand(p, -1))


def interfacegan_boundaries(bank: SampleBank, attributes: Optional[Sequence[str]] = None, *, ratio: float = 0.02,
                            train_fraction: float = 0.7, C: float = 1.0, seed: int = 0, device=None,
                            loss: str = "hinge") -> Boundaries:
    """One linear SVM per attribute on the bank's extremes (InterFaceGAN ``train_boundary``).

    The sets are :func:`interfacegan_training_sets`'; the boundary is the SVM's unit normal
    w/‖w‖ (positive side = high c_j), its accuracy the held-out one. All attributes' SVMs are
    solved together by :func:`fit_linear_svms` on ``device`` (default CPU).
    """
    names, x_tr, y_tr, x_va, y_va = interfacegan_training_sets(bank, attributes, ratio=ratio,
                                                               train_fraction=train_fraction, seed=seed)
    device = torch.device("cpu") if device is None else torch.device(device)
    w, b = fit_linear_svms(x_tr.to(device), y_tr.to(device), C=C, loss=loss)
    w, b = w.float().cpu(), b.float().cpu()
    norm = w.norm(dim=1).clamp_min(1e-12)
    if x_va.shape[1]:
        pred = torch.where(torch.einsum("ptd,pd->pt", x_va, w) + b[:, None] >= 0, 1.0, -1.0)
        acc = (pred == y_va).float().mean(1)
    else:
        acc = torch.full((len(names),), float("nan"))
    return Boundaries(w / norm[:, None], names, acc, b / norm)


def conditional_boundary(boundaries: Boundaries, target: str, conditions: Sequence[str]) -> Tensor:
    """The target's normal with its components along the condition normals removed:
    n = n_t − Nᵀ (N Nᵀ)⁻¹ N n_t for N [k, d] the condition normals (a Gram solve: any k), unit.
    Moving along n leaves every condition's signed distance unchanged."""
    if isinstance(conditions, str):
        conditions = [conditions]
    t = boundaries.index(target) if isinstance(target, str) else _index(boundaries.names, target, "target")
    idx = [_index(boundaries.names, c, "conditions") for c in conditions]
    if t in idx:
        raise ValueError(f"conditions must not contain the target {target!r}")
    nt = boundaries.normals[t].double()
    if not idx:
        return boundaries.normals[t].clone()
    nc = boundaries.normals[idx].double()
    gram = nc @ nc.T
    if torch.linalg.matrix_rank(gram, rtol=1e-8) < len(idx):
        raise ValueError(f"conditions {list(conditions)}: their normals are linearly dependent")
    coef = torch.linalg.solve(gram, nc @ nt)
    out = nt - nc.T @ coef
    norm = out.norm()
    if not (norm > 1e-6):
        raise ValueError(f"conditional_boundary: {target!r} lies in the span of the conditions' normals")
    return (out / norm).to(boundaries.normals.dtype)


def linear_edit(z: Tensor, direction: Tensor, distances, *, relative: bool = False) -> Tensor:
    """Latents moved along a unit ``direction`` [d]: z [N, d], distances [S] → [S, N, d].

    Absolute (InterFaceGAN ``linear_interpolate``): z + (s − z·n) n puts every latent at signed
    distance s (offset-free) along n. ``relative=True``: z + s·n."""
    _check_latents(z, "z")
    direction = torch.as_tensor(direction, dtype=z.dtype, device=z.device)
    if direction.dim() != 1 or direction.shape[0] != z.shape[1]:
        raise ValueError(f"direction must be [{z.shape[1]}], got {list(direction.shape)}")
    if not bool(torch.isfinite(direction).all()) or not (direction.norm() > 0):
        raise ValueError("direction must be finite and non-zero")
    n = direction / direction.norm()
    s = torch.as_tensor(distances, dtype=z.dtype, device=z.device).reshape(-1)
    if not bool(torch.isfinite(s).all()):
        raise ValueError("distances must be finite")
    shift = s[:, None] if relative else s[:, None] - (z @ n)[None, :]
    return z[None] + shift[..., None] * n


# --- GANSpace -----------------------------------------------------------------------------------

@dataclass
class Directions:
    """GANSpace directions: ``components`` [K, d] unit z-directions, ``stdev`` [K] (σ of the
    samples' z along each, for edits in σ units), ``explained_variance_ratio`` [K] (of the
    space the PCA ran in)."""

    components: Tensor
    stdev: Tensor
    explained_variance_ratio: Tensor


def _pca(x: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k principal axes [k, D] (sign: largest |coordinate| positive), variances [k] and the
    total variance of x [N, D] (float64)."""
    x = x.double()
    xc = x - x.mean(0)
    n, dim = x.shape
    if dim <= 4096:
        var, vec = torch.linalg.eigh(xc.T @ xc / max(n - 1, 1))
        var, vec = var.flip(0)[:k].clamp_min(0), vec.flip(1)[:, :k].T
    else:
        _, s, v = torch.linalg.svd(xc, full_matrices=False)
        var, vec = (s[:k] ** 2) / max(n - 1, 1), v[:k]
    sign = torch.sign(vec.gather(1, vec.abs().argmax(1, keepdim=True)))
    total = (xc * xc).sum() / max(n - 1, 1)
    return vec * sign, var, total


@torch.no_grad()
def ganspace_directions(z_or_bank, n_components: int = 80, *, layer=None, generator=None, chunk_size: int = 256,
                        device=None, progress: bool = True) -> Directions:
    """GANSpace: principal directions of z, or of a layer's activations mapped back to z.

    ``layer=None``: PCA on z [N, d] (the components are z-directions). Otherwise activations
    A = layer(z) [N, ...] (``layer`` a callable, or the name of a submodule of ``generator``
    whose output is captured) are flattened, their top principal axes V give coordinates
    X = (A − Ā)V, and z is regressed on X by least squares, z − z̄ ≈ X B; the rows of B,
    normalised, are the z-directions (harskish/ganspace's regression for non-StyleGAN
    generators)."""
    z = z_or_bank.z if isinstance(z_or_bank, SampleBank) else z_or_bank
    _check_latents(z, "z_or_bank")
    n, d = z.shape
    if not isinstance(n_components, int) or n_components < 1:
        raise ValueError(f"n_components must be a positive integer, got {n_components!r}")
    if layer is None:
        k = min(n_components, d)
        vec, var, total = _pca(z.cpu(), k)
        return Directions(vec.float(), var.sqrt().float(), (var / total).float())
    if isinstance(layer, str):
        if not isinstance(generator, nn.Module):
            raise ValueError("generator: a module is needed when layer names one of its submodules")
        try:
            module = generator.get_submodule(layer)
        except AttributeError as e:
            raise ValueError(f"layer: the generator has no submodule {layer!r}") from e
        captured: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))

        def layer_fn(zz: Tensor) -> Tensor:
            captured.clear()
            generator(zz)
            return captured[0]
    elif callable(layer):
        handle, layer_fn = None, layer
    else:
        raise ValueError(f"layer must be None, a callable or a submodule name, got {type(layer).__name__}")
    dev = _device_of(generator, device) if device is None else torch.device(device)
    acts = []
    try:
        with _eval_mode(generator), _progress(n, progress, "GANSpace activations") as bar:
            for lo in range(0, n, chunk_size):
                a = layer_fn(z[lo:lo + chunk_size].to(dev))
                acts.append(a.reshape(a.shape[0], -1).float().cpu())
                bar.update(a.shape[0])
    finally:
        if handle is not None:
            handle.remove()
    a = torch.cat(acts)
    k = min(n_components, a.shape[1], n - 1)
    vec, var, total = _pca(a, k)
    coords = (a.double() - a.double().mean(0)) @ vec.T  # [N, k]
    zc = z.cpu().double() - z.cpu().double().mean(0)
    b = torch.linalg.lstsq(coords, zc).solution  # [k, d]
    comps = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    stdev = (zc @ comps.T).std(0)
    return Directions(comps.float(), stdev.float(), (var / total).float())


@torch.no_grad()
def choose_components(directions: Directions, generator, phi, z_heldout: Tensor, attributes=None, *,
                      strength: float = 2.0, chunk_size: int = 256, progress: bool = True) -> dict:
    """Per attribute, the GANSpace component and sign that move it most (the stated choice).

    For every component k, the held-out latents are moved by ±strength·σ_k along it; the
    effect e_k = (mean Δc_j⁺ − mean Δc_j⁻)/2. Returns {name: (k, sign)} with k = argmax |e_k|
    and sign = sign(e_k): moving along sign·component raises the attribute."""
    d = _z_dim(generator)
    _check_latents(z_heldout, "z_heldout", d)
    dev = _device_of(generator)
    comps = directions.components.to(dev, torch.float32)
    steps = strength * directions.stdev.to(dev, torch.float32)
    kk = comps.shape[0]
    z = z_heldout.to(dev, torch.float32)
    with _eval_mode(generator, phi):
        base = torch.cat([_attributes(generator, phi, z[lo:lo + chunk_size]) for lo in range(0, len(z), chunk_size)])
        names = _names_of(phi, base.shape[1])
        wanted = names if attributes is None else [attributes] if isinstance(attributes, str) else list(attributes)
        cols = [_index(names, a, "attributes") for a in wanted]
        effect = torch.zeros(kk, len(cols), device=dev)
        with _progress(2 * kk, progress, "choose components") as bar:
            for k in range(kk):
                for sgn in (1.0, -1.0):
                    moved = z + sgn * steps[k] * comps[k]
                    c = torch.cat([_attributes(generator, phi, moved[lo:lo + chunk_size])
                                   for lo in range(0, len(z), chunk_size)])
                    effect[k] += sgn * 0.5 * (c[:, cols] - base[:, cols]).mean(0)
                    bar.update(1)
    best = effect.abs().argmax(0)
    return {wanted[i]: (int(best[i]), 1 if float(effect[best[i], i]) >= 0 else -1) for i in range(len(cols))}


# --- the auxiliary mapping F (Fig. 2) ------------------------------------------------------------

def _groups(width: int, groups: int) -> int:
    g = min(groups, width)
    while width % g:
        g -= 1
    return g


class AuxiliaryMapping(nn.Module):
    """F: Z × C → Z of seed 000 (eq. 1, Fig. 2): F(z [N, d], c [N, M]) → [N, d].

    (z, c) as a 1×1 map with d + M channels → ``blocks`` × [Conv2d(1×1) → Swish → GroupNorm],
    c concatenated to every block's input → a 1×1 Conv2d head; F = z + head.
    Widths and groups: see the module docstring."""

    def __init__(self, z_dim: int, c_dim: int, *, width: int = 512, blocks: int = 3, groups: int = 32) -> None:
        super().__init__()
        for name, v in (("z_dim", z_dim), ("c_dim", c_dim), ("width", width), ("blocks", blocks), ("groups", groups)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"AuxiliaryMapping: {name} must be a positive integer, got {v!r}")
        self.z_dim, self.c_dim = z_dim, c_dim
        self.config = {"z_dim": z_dim, "c_dim": c_dim, "width": width, "blocks": blocks, "groups": groups}
        g = _groups(width, groups)
        self.blocks = nn.ModuleList()
        ch = z_dim
        for _ in range(blocks):
            self.blocks.append(nn.ModuleDict({"conv": nn.Conv2d(ch + c_dim, width, 1), "norm": nn.GroupNorm(g, width)}))
            ch = width
        self.head = nn.Conv2d(ch + c_dim, z_dim, 1)

    def forward(self, z: Tensor, c: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"AuxiliaryMapping: z must be [N, {self.z_dim}], got {list(z.shape)}")
        if c.dim() != 2 or c.shape != (z.shape[0], self.c_dim):
            raise ValueError(f"AuxiliaryMapping: c must be [{z.shape[0]}, {self.c_dim}], got {list(c.shape)}")
        # A 1×1 convolution of a 1×1 map is a matrix product: computed as one (same weights).
        cc = c.to(z.dtype)
        h = z
        for block in self.blocks:
            conv = block["conv"]
            h = nn.functional.linear(torch.cat([h, cc], 1), conv.weight.flatten(1), conv.bias)
            h = block["norm"](nn.functional.silu(h))
        return z + nn.functional.linear(torch.cat([h, cc], 1), self.head.weight.flatten(1), self.head.bias)

    def save(self, path: str) -> None:
        save_atomic({"kind": _MAPPING_KIND, "config": dict(self.config),
                      "state_dict": {k: v.cpu() for k, v in self.state_dict().items()}}, path)

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "AuxiliaryMapping":
        state = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(state, dict) or state.get("kind") not in (_MAPPING_KIND, _MAPPING_KIND + ".training"):
            raise ValueError(f"AuxiliaryMapping.load: {path} is not a saved auxiliary mapping")
        cfg = state["config"]
        f = cls(cfg["z_dim"], cfg["c_dim"], width=cfg["width"], blocks=cfg["blocks"], groups=cfg["groups"])
        f.load_state_dict(state["state_dict"])
        return f.eval()


def train_mapping(bank: SampleBank, *, steps: int, batch_size: int = 8, lr: float = 2e-4, noise: float = 0.5,
                  seed: int = 0, device=None, checkpoint: Optional[str] = None, checkpoint_every: int = 1000,
                  width: int = 512, blocks: int = 3, groups: int = 32, progress: bool = True,
                  log: Optional[list] = None) -> AuxiliaryMapping:
    """Train F on the bank: Adam(lr), ``steps`` minibatches of ``batch_size`` (the papers: 2e-4, 8).

    Loss per step: mean_i ‖F(z_i + noise·ε_i, c_i) − z_i‖², ε ~ N(0, I), c_i = Φ(z_i) from the
    bank. ``noise=0`` is eq. 1's plain reconstruction loss (which F = identity solves, ignoring
    c); ``noise > 0`` is the denoiser remedy (module docstring). With ``checkpoint`` (a path) the
    model, optimiser and sampler state are saved every ``checkpoint_every`` steps and at the end,
    and a rerun resumes from it (its settings must match). ``log``: a list that receives
    (step, loss) every 100 steps. Returns F in eval mode on ``device`` (default CPU).
    """
    if not isinstance(bank, SampleBank):
        raise ValueError(f"bank must be a SampleBank, got {type(bank).__name__}")
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (noise >= 0) or not math.isfinite(noise):
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    if not (lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    device = torch.device("cpu") if device is None else torch.device(device)
    n, d = bank.z.shape
    m = bank.attributes.shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        f = AuxiliaryMapping(d, m, width=width, blocks=blocks, groups=groups).to(device)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    settings = {"seed": seed, "noise": float(noise), "lr": float(lr), "batch_size": batch_size, "n": n}
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("kind") != _MAPPING_KIND + ".training":
            raise ValueError(f"checkpoint: {checkpoint} exists but is not a train_mapping checkpoint")
        if state["config"] != f.config or state["settings"] != settings:
            raise ValueError(f"checkpoint: {checkpoint} was trained with {state['config']} {state['settings']}, "
                             f"this call asks for {f.config} {settings}; use another path or delete it")
        f.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["sampler"])
        start = int(state["step"])
    z_all, c_all = bank.z.to(device), bank.attributes.to(device)

    def save(step: int) -> None:
        save_atomic({"kind": _MAPPING_KIND + ".training", "config": dict(f.config), "settings": settings,
                      "state_dict": {k: v.cpu() for k, v in f.state_dict().items()},
                      "optimizer": opt.state_dict(), "sampler": gen.get_state(), "step": step}, checkpoint)

    f.train()
    with _progress(steps, progress, "train F") as bar:
        bar.update(start)
        for step in range(start, steps):
            idx = torch.randint(n, (batch_size,), generator=gen)
            eps = torch.randn(batch_size, d, generator=gen).to(device)
            z, c = z_all[idx.to(device)], c_all[idx.to(device)]
            loss = (f(z + noise * eps, c) - z).pow(2).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if log is not None and step % 100 == 0:
                log.append((step, float(loss.detach())))
            if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
                save(step + 1)
            bar.update(1)
    return f.eval()


# --- SGF and CG ------------------------------------------------------------------------------------

@dataclass
class EditResult:
    """What :func:`sgf` and :func:`conjugate_gradient` return (all on the CPU, float32).

    ``z`` [N, d] final latents; ``attributes`` [N, M] their Φ; ``steps`` [N] steps each sample
    took; ``converged`` [N] bool; ``trajectory_z`` [T+1, N, d] and ``trajectory_attributes``
    [T+1, N, M] (z_0..z_T; a converged sample's later rows repeat its final state) or None;
    ``attributes_before`` [N, M] = Φ(z₀); ``names`` the attribute names."""

    z: Tensor
    attributes: Tensor
    steps: Tensor
    converged: Tensor
    trajectory_z: Optional[Tensor] = None
    trajectory_attributes: Optional[Tensor] = None
    attributes_before: Optional[Tensor] = None
    names: list = field(default_factory=list)


def surrogate_field(mapping: Callable[[Tensor, Tensor], Tensor], z: Tensor, c: Tensor, dc: Tensor,
                    neumann: int = 1) -> Tensor:
    """SGF's field at z [B, d] for the attribute change δc [B, M], by finite differences of F:
    u = F(z, c + δc) − F(z, c) (≈ J_c δc); then ``neumann`` times δz ← u + F(z + δz, c) − F(z, c)
    (≈ u + J_z δz), the partial sums of (I − J_z)⁻¹ J_c δc. Costs 2 + neumann calls of F."""
    base = mapping(z, c)
    u = mapping(z, c + dc) - base
    dz = u
    for _ in range(neumann):
        dz = u + (mapping(z + dz, c) - base)
    return dz


def _goals(targets, names: Sequence[str], n: int) -> tuple[list[int], Tensor]:
    """Targeted columns and goals [N, K] (float32, CPU)."""
    if not isinstance(targets, Mapping) or not targets:
        raise ValueError("targets must be a non-empty mapping {attribute name: goal in [0, 1]}")
    cols, goals = [], []
    for key, goal in targets.items():
        j = _index(names, key, "targets")
        if j in cols:
            raise ValueError(f"targets names attribute {key!r} twice")
        g = torch.as_tensor(goal, dtype=torch.float32).detach().cpu()
        if g.dim() == 0:
            g = g.expand(n)
        if g.shape != (n,):
            raise ValueError(f"targets[{key!r}] must be a number or a tensor [{n}], got {list(g.shape)}")
        if not bool(((g >= 0) & (g <= 1)).all()):
            raise ValueError(f"targets[{key!r}] must lie in [0, 1] (attribute goals), got values outside")
        cols.append(j)
        goals.append(g)
    return cols, torch.stack(goals, 1)


def _reached(c: Tensor, goal: Tensor, direction: Tensor, tol: float) -> Tensor:
    """[B] bool: every targeted attribute c [B, K] within ``tol`` of its goal or past it in the
    direction of travel."""
    return (direction * (c - goal) >= -tol).all(1)


@torch.no_grad()
def _edit(method: str, generator, phi, mapping, z: Tensor, targets, *, steps: int, rate: float, neumann: int,
          beta_max: float, restart_every: Optional[int], eta: float, tol: float, chunk_size: int, progress: bool,
          return_trajectory: bool, device) -> EditResult:
    d = _z_dim(generator)
    _check_latents(z, "z", d)
    if z.shape[0] == 0:
        raise ValueError("z must hold at least one latent, got [0, d]")
    for name, v in (("steps", steps), ("neumann", neumann), ("chunk_size", chunk_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if name == "chunk_size" else 0):
            raise ValueError(f"{name} must be a {'positive' if name == 'chunk_size' else 'non-negative'} integer, got {v!r}")
    if not math.isfinite(rate) or not math.isfinite(eta) or not math.isfinite(beta_max):
        raise ValueError("lam / alpha, eta and beta_max must be finite numbers")
    if not (0 <= tol < 1):
        raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
    restart_every = d if restart_every is None else restart_every
    if not isinstance(restart_every, int) or restart_every < 1:
        raise ValueError(f"restart_every must be a positive integer, got {restart_every!r}")
    dev = _device_of(mapping, _device_of(generator)) if device is None else torch.device(device)
    n = z.shape[0]
    names: Optional[list] = None
    if getattr(phi, "names", None) is not None:
        _goals(targets, _names_of(phi), n)  # bad targets fail before any work
    out_z = torch.empty(n, d)
    out_c: Optional[Tensor] = None
    before: Optional[Tensor] = None
    taken = torch.zeros(n, dtype=torch.long)
    conv = torch.zeros(n, dtype=torch.bool)
    traj_z = torch.empty(steps + 1, n, d) if return_trajectory else None
    traj_c: Optional[Tensor] = None
    n_chunks = (n + chunk_size - 1) // chunk_size
    with _eval_mode(generator, phi, mapping), _progress(n_chunks * steps, progress, method) as bar:
        for lo in range(0, n, chunk_size):
            hi = min(lo + chunk_size, n)
            zc = z[lo:hi].to(dev, torch.float32).clone()
            c = _attributes(generator, phi, zc)
            if names is None:
                names = _names_of(phi, c.shape[1])
                cols, goal_all = _goals(targets, names, n)
                m = c.shape[1]
                out_c, before = torch.empty(n, m), torch.empty(n, m)
                traj_c = torch.empty(steps + 1, n, m) if return_trajectory else None
            elif c.shape[1] != len(names):
                raise ValueError(f"phi returned {c.shape[1]} attributes for one chunk and {len(names)} for another")
            goal = goal_all[lo:hi].to(dev)
            c1 = c.clone()
            c1[:, cols] = goal  # attributes not targeted keep c₀ (δc = 0 there)
            direction = torch.sign(goal - c[:, cols])
            before[lo:hi] = c.cpu()
            dc_once = rate * (c1 - c)  # SGF: δc = λ(c₁ − c₀), once
            done = _reached(c[:, cols], goal, direction, tol)
            k = torch.zeros(hi - lo, dtype=torch.long, device=dev)
            d_prev = torch.zeros_like(zc)
            g2_prev = torch.zeros(hi - lo, device=dev)
            if return_trajectory:
                traj_z[0, lo:hi], traj_c[0, lo:hi] = zc.cpu(), c.cpu()
            for i in range(steps):
                act = (~done).nonzero().squeeze(1)
                if act.numel() == 0:
                    if return_trajectory:
                        traj_z[i + 1:, lo:hi], traj_c[i + 1:, lo:hi] = zc.cpu(), c.cpu()
                    bar.update(steps - i)
                    break
                za, ca = zc[act], c[act]
                if method == "sgf":
                    za = za + surrogate_field(mapping, za, ca, dc_once[act], neumann)
                else:
                    # Algorithm 1, lines 7–10 with δc_i = α(c₁ − Φ(z_i)) (module docstring)
                    g = surrogate_field(mapping, za, ca, rate * (c1[act] - ca), neumann)
                    g2 = (g * g).sum(1)
                    dp = d_prev[act]
                    beta = (g2 / g2_prev[act].clamp_min(1e-30)).clamp(max=beta_max)
                    restart = ((g * dp).sum(1) <= 0) | (k[act] % restart_every == 0)
                    beta = torch.where(restart, torch.zeros_like(beta), beta)
                    direc = g + beta[:, None] * dp
                    d_prev[act], g2_prev[act] = direc, g2
                    za = za + eta * direc
                ca = _attributes(generator, phi, za, c.shape[1])
                zc[act], c[act] = za, ca
                k[act] += 1
                done[act] = _reached(ca[:, cols], goal[act], direction[act], tol)
                if return_trajectory:
                    traj_z[i + 1, lo:hi], traj_c[i + 1, lo:hi] = zc.cpu(), c.cpu()
                bar.update(1)
            out_z[lo:hi], out_c[lo:hi] = zc.cpu(), c.cpu()
            taken[lo:hi], conv[lo:hi] = k.cpu(), done.cpu()
    return EditResult(out_z, out_c, taken, conv, traj_z, traj_c, before, list(names))


def sgf(generator, phi, mapping, z: Tensor, targets: Mapping[str, Goal], *, steps: int = 20, lam: float = 1.0,
        neumann: int = 1, tol: float = 0.01, chunk_size: int = 1024, progress: bool = True,
        return_trajectory: bool = False, device=None) -> EditResult:
    """Surrogate gradient field editing (Li et al. 2021), closed loop, no Jacobians.

    c₀ = Φ(z₀); c₁ = c₀ with the targeted attributes set to their goals; δc = λ(c₁ − c₀) once.
    Per step, for the samples not yet converged: z ← z + :func:`surrogate_field` (z, c, δc,
    neumann); c ← Φ(G(z)). Up to ``steps`` steps; per-sample stop at the goal (module
    docstring). Runs in chunks of ``chunk_size`` latents on ``device`` (default F's).

    Args:
        z: starting latents [N, d]; targets: {name: goal} with goals in [0, 1], a number or [N].
    """
    return _edit("sgf", generator, phi, mapping, z, targets, steps=steps, rate=lam, neumann=neumann, beta_max=0.0,
                 restart_every=1, eta=1.0, tol=tol, chunk_size=chunk_size, progress=progress,
                 return_trajectory=return_trajectory, device=device)


def conjugate_gradient(generator, phi, mapping, z: Tensor, targets: Mapping[str, Goal], *, steps: int = 20,
                       alpha: float = 1.0, beta_max: float = 1.0, restart_every: Optional[int] = None,
                       eta: float = 1.0, neumann: int = 1, tol: float = 0.01, chunk_size: int = 1024,
                       progress: bool = True,
                       return_trajectory: bool = False, device=None) -> EditResult:
    """Seed 000 Algorithm 1: conjugate-gradient editing along the surrogate field.

    c₀ = Φ(z₀) (line 1); c₁ as in :func:`sgf`; d₀ = 0 (line 4). For i = 0, 1, …, steps − 1 and
    every sample not yet converged:
      g_i = :func:`surrogate_field` (z_i, c_i, α(c₁ − c_i), neumann)          (line 7)
      β_i = min(‖g_i‖² / ‖g_{i−1}‖², beta_max), 0 at the first step, after
            g_i·d_{i−1} ≤ 0, and every ``restart_every`` steps (default z_dim)   (line 8)
      d_i = g_i + β_i d_{i−1}                                                 (line 9)
      z_{i+1} = z_i + η d_i                                                  (line 10)
      c_{i+1} = Φ(G(z_{i+1})); stop when the goals are reached               (lines 11–13)
    """
    return _edit("cg", generator, phi, mapping, z, targets, steps=steps, rate=alpha, neumann=neumann,
                 beta_max=beta_max, restart_every=restart_every, eta=eta, tol=tol, chunk_size=chunk_size,
                 progress=progress,
                 return_trajectory=return_trajectory, device=device)



@torch.no_grad()
def linear_path(generator, phi, z: Tensor, direction: Tensor, targets: Mapping[str, Goal], *, strength: float = 3.0,
                steps: int = 20, tol: float = 0.01, chunk_size: int = 1024, progress: bool = True,
                return_trajectory: bool = False, device=None) -> EditResult:
    """InterFaceGAN / GANSpace edits with the stopping rule of :func:`sgf` and
    :func:`conjugate_gradient`, so the four methods are measured alike.

    Each sample moves toward its goal along ±``direction`` [d] (unit; the sign per sample is
    sign(goal − c₀) of the one targeted attribute) by s_k = k·strength/steps, k = 0..steps
    (:func:`linear_edit`, relative; σ units when z ~ N(0, I) and the direction is unit), and stops
    at the first s_k whose Φ reaches the goal (module docstring: "Convergence"); ``steps`` [N]
    is that k. Returns an :class:`EditResult` (trajectories hold z(s_0..s_steps))."""
    d = _z_dim(generator)
    _check_latents(z, "z", d)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not (math.isfinite(strength) and strength > 0):
        raise ValueError(f"strength must be a positive number, got {strength!r}")
    if not (0 <= tol < 1):
        raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
    dev = _device_of(generator) if device is None else torch.device(device)
    direction = torch.as_tensor(direction, dtype=torch.float32).to(dev)
    if direction.shape != (d,) or not bool(torch.isfinite(direction).all()) or not (direction.norm() > 0):
        raise ValueError(f"direction must be a finite, non-zero tensor [{d}], got {list(direction.shape)}")
    n = z.shape[0]
    s = torch.linspace(0.0, strength, steps + 1, device=dev)
    parts = []
    with _eval_mode(generator, phi), _progress(n, progress, "linear") as bar:
        for lo in range(0, n, chunk_size):
            z0 = z[lo:lo + chunk_size].to(dev, torch.float32)
            c0 = _attributes(generator, phi, z0)
            cols, goal = _goals(targets, _names_of(phi, c0.shape[1]), n)
            if len(cols) != 1:
                raise ValueError(f"targets: a linear edit moves one attribute, got {len(cols)}")
            col, goal = cols[0], goal[lo:lo + chunk_size, 0].to(dev)
            sign = torch.where(goal >= c0[:, col], 1.0, -1.0)
            path_z = linear_edit(z0, direction, s, relative=True)                  # [S+1, B, d] along +n
            path_z = z0[None] + (path_z - z0[None]) * sign[None, :, None]
            path_c = torch.stack([c0] + [_attributes(generator, phi, zk, c0.shape[1]) for zk in path_z[1:]])
            reached = sign[None] * (path_c[:, :, col] - goal[None]) >= -tol      # [S+1, B]
            first = torch.where(reached.any(0), reached.float().argmax(0), torch.full_like(goal, steps).long())
            held = (torch.arange(steps + 1, device=dev)[:, None] > first[None])[..., None]
            idx = torch.arange(z0.shape[0], device=dev)
            path_z = torch.where(held, path_z[first, idx][None], path_z)
            path_c = torch.where(held, path_c[first, idx][None], path_c)
            parts.append((path_z.cpu(), path_c.cpu(), first.cpu(), reached.any(0).cpu()))
            bar.update(z0.shape[0])
    traj_z = torch.cat([p[0] for p in parts], 1)
    traj_c = torch.cat([p[1] for p in parts], 1)
    return EditResult(traj_z[-1], traj_c[-1], torch.cat([p[2] for p in parts]), torch.cat([p[3] for p in parts]),
                      traj_z if return_trajectory else None, traj_c if return_trajectory else None,
                      traj_c[0], _names_of(phi, traj_c.shape[2]))

# --- MDS -----------------------------------------------------------------------------------------

@dataclass
class MDSResult:
    """MDS and its curve: ``accuracy`` [S], ``disentanglement`` [S] (threshold), the strict
    variants, ``changed`` [S, N] (other attributes moved per sample), ``reached`` [S, N]."""

    mds: float
    accuracy: Tensor
    disentanglement: Tensor
    threshold: float
    mds_strict: Optional[float] = None
    disentanglement_strict: Optional[Tensor] = None
    strict_threshold: Optional[float] = None
    changed: Optional[Tensor] = None
    reached: Optional[Tensor] = None


def mds_area(accuracy: Tensor, disentanglement: Tensor, close: str = "zero") -> float:
    """Area under disentanglement vs accuracy: points ordered by accuracy (stable), anchored at
    (0, 1), trapezoids; beyond the last accuracy 0 (``close="zero"``) or the last value
    (``"flat"``)."""
    if close not in ("zero", "flat"):
        raise ValueError(f"close must be 'zero' or 'flat', got {close!r}")
    acc, dis = accuracy.double().reshape(-1), disentanglement.double().reshape(-1)
    order = torch.argsort(acc, stable=True)
    x = torch.cat([acc.new_zeros(1), acc[order]])
    y = torch.cat([acc.new_ones(1), dis[order]])
    area = float(((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2).sum())
    if close == "flat":
        area += float((1 - x[-1]) * y[-1])
    return area


def mds(attributes_before: Tensor, attributes_curve: Tensor, target: Union[int, str], goal: Goal, *,
        names: Optional[Sequence[str]] = None, threshold: float = 0.5, strict_threshold: Optional[float] = 0.25,
        tol: float = 0.01, close: str = "zero") -> MDSResult:
    """The manipulation-disentanglement score (seed 000 §4.2.1, eq. 4).

    Args:
        attributes_before: Φ before the edit [N, M]. attributes_curve: Φ at strengths
            s₀ < … < s_{S−1} [S, N, M] (e.g. an :class:`EditResult`'s trajectory).
        target: the edited attribute (index, or name with ``names``); goal: in [0, 1], a
            number or [N].
    At strength s: accuracy_s = (1/N) Σ_i reached_i (sign(goal − before)·(c − goal) ≥ −tol, the
    rule :func:`sgf` and :func:`conjugate_gradient` stop by);
    disentanglement_s = (1/N) Σ_i (1 − n_i/(M − 1)) (eq. 4; 1 when M = 1), n_i the other
    attributes with |c − before| > threshold; MDS = :func:`mds_area`.
    """
    _check_attributes(attributes_before, "attributes_before")
    n, m = attributes_before.shape
    if not isinstance(attributes_curve, Tensor) or attributes_curve.dim() != 3 or attributes_curve.shape[1:] != (n, m):
        shape = list(attributes_curve.shape) if isinstance(attributes_curve, Tensor) else type(attributes_curve).__name__
        raise ValueError(f"attributes_curve must be [S, {n}, {m}], got {shape}")
    if not bool(torch.isfinite(attributes_curve).all()):
        raise ValueError("attributes_curve holds non-finite values (NaN or inf)")
    if isinstance(target, str):
        if names is None:
            raise ValueError("names: needed to look up target by name")
        if len(names) != m:
            raise ValueError(f"names lists {len(names)} names for {m} attributes")
    t = _index(list(names) if names is not None else [str(j) for j in range(m)], target, "target")
    g = torch.as_tensor(goal, dtype=torch.float64).reshape(-1) if not isinstance(goal, Tensor) else goal.double().cpu()
    if g.numel() == 1:
        g = g.reshape(()).expand(n)
    if g.shape != (n,):
        raise ValueError(f"goal must be a number or a tensor [{n}], got {list(g.shape)}")
    if not bool(((g >= 0) & (g <= 1)).all()):
        raise ValueError("goal must lie in [0, 1]")
    for name, th in (("threshold", threshold), ("strict_threshold", strict_threshold)):
        if th is not None and not (th >= 0 and math.isfinite(th)):
            raise ValueError(f"{name} must be a finite number >= 0, got {th!r}")
    before, curve = attributes_before.double().cpu(), attributes_curve.double().cpu()
    direction = torch.sign(g - before[:, t])
    if not (0 <= tol < 1):
        raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
    reached = direction * (curve[:, :, t] - g) >= -tol  # [S, N]
    accuracy = reached.double().mean(1)
    delta = (curve - before).abs()
    delta[:, :, t] = 0

    def disentanglement(th: float) -> tuple[Tensor, Tensor]:
        changed = (delta > th).sum(-1)
        if m == 1:
            return torch.ones(curve.shape[0], dtype=torch.float64), changed
        return (1 - changed.double() / (m - 1)).mean(1), changed

    dis, changed = disentanglement(threshold)
    res = MDSResult(mds_area(accuracy, dis, close), accuracy.float(), dis.float(), float(threshold),
                    changed=changed, reached=reached)
    if strict_threshold is not None:
        dis_s, _ = disentanglement(strict_threshold)
        res.mds_strict, res.disentanglement_strict = mds_area(accuracy, dis_s, close), dis_s.float()
        res.strict_threshold = float(strict_threshold)
    return res
