"""Attribute editing throughput (seed 000): latentx's batched SGF / CG against the public SGF
approach, the time split of one step, and InterFaceGAN boundary fitting.

Setting: the face DCGAN (``latentx.models.load("face-dcgan")``) and the face attribute model
(``latentx.attributes.load("face")``, 12 attributes); F is ``latentx.edit.AuxiliaryMapping``
at its defaults, briefly trained (throughput does not depend on how well). Every step of SGF or
CG costs one G(z) → Φ pass (the closed loop) and 2 + m evaluations of F (m Neumann
corrections); the rows say how the time of a step splits between them and the loop itself.

* **latentx** — ``edit.sgf`` / ``edit.conjugate_gradient`` over N latents in chunks of 500,
  finite differences of F (no Jacobian), a goal no latent reaches (every latent takes every
  step, so the work is fixed); one timed call after a warm-up chunk. The split: G, Φ and F
  timed alone on one chunk (median), times the calls a run makes per chunk (steps + 1 passes
  of G and Φ, 3 calls of F per step); "loop" is what remains of the measured time.
* **public SGF approach** — as the unofficial SGF code does it (KYM384/SGF): one latent at a
  time, the Jacobian ∂F/∂c [d, M] by autograd at each step and δz = J·δc, then G and Φ on that
  one latent. Timed on a few latents; its rate is per latent, so it is compared per latent.
* **boundaries** — InterFaceGAN for all 12 attributes over the bank: latentx's batched torch
  SVM (``edit.interfacegan_boundaries``) against the repository's way, one scikit-learn
  ``SVC(kernel="linear")`` per attribute on the same training sets (when scikit-learn is
  installed). The normals must agree (cosine ≥ 0.99) before anything is timed.
* **the field alone** — the part where the two approaches differ: latentx's
  F(z, c + δc) − F(z, c) on a chunk against ∂F/∂c by autograd per latent, J·δc; the
  finite difference's distance from J·δc is printed (F is not linear in c).
"""

from __future__ import annotations

import time

import torch

from latentx import attributes, edit, models
from latentx.benchmarks.timing import measure, synchronize


def _setting(device: torch.device, bank_size: int):
    G = models.load("face-dcgan", device=device)
    phi = attributes.load("face", device=device)
    bank = edit.sample_bank(G, phi, bank_size, seed=0, chunk_size=500, device=device, progress=False)
    mapping = edit.train_mapping(bank, steps=200, seed=0, device=device, progress=False)
    return G, phi, bank, mapping


def targets_of(n: int, device=None) -> dict:
    # happy = 1 with tol = 0: a softmax probability never reaches it, so no latent stops early.
    return {"happy": torch.full((n,), 1.0, device=device)}


def public_sgf_step(G, phi, mapping, z: torch.Tensor, c: torch.Tensor,
                    delta_c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGF step for ONE latent z [1, d] with c = Φ(G(z)) [1, M], the public way: J = ∂F(z, c)/∂c
    by autograd, δz = J·δc (plus one Neumann correction, as KYM384's m = 1), z ← z + δz, then the
    closed loop's c ← Φ(G(z)). Returns (z, c)."""
    J = torch.autograd.functional.jacobian(lambda cc: mapping(z, cc), c)     # [1, d, 1, M]
    dz = (J[0, :, 0, :] @ delta_c[0]).unsqueeze(0)
    with torch.no_grad():
        dz = dz + mapping(z + dz, c) - mapping(z, c)
        z = z + dz
        return z, phi(G(z))


def run(device: torch.device, quick: bool, repeats: int) -> list[dict]:
    n, steps, public_n = (256, 2, 2) if quick else (10_000, 2, 20)
    bank_size = 1_000 if quick else 20_000
    G, phi, bank, mapping = _setting(device, bank_size)
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    targets = targets_of(n, device)
    chunk = min(500, n)
    rows = []

    # --- the split of one step: G, Φ, F, and what is left (the loop) ---------------------
    zc = z[:chunk]
    with torch.no_grad():
        images = G(zc)
        c = phi(images)
    parts = {"G": lambda: G(zc), "Φ": lambda: phi(images), "F x3": lambda: [mapping(zc, c) for _ in range(3)]}
    with torch.no_grad():
        split = {k: measure(fn, device, warmup=1, repeats=repeats, max_seconds=5.0).median for k, fn in parts.items()}

    for name, method in (("SGF", edit.sgf), ("CG", edit.conjugate_gradient)):
        # One timed call over all N latents (minutes on a CPU at N = 10,000), after a warm-up chunk.
        method(G, phi, mapping, zc, targets_of(chunk), steps=1, chunk_size=chunk, progress=False)
        synchronize(device)
        start = time.perf_counter()
        result = method(G, phi, mapping, z, targets, steps=steps, tol=0.0, chunk_size=chunk, progress=False)
        synchronize(device)
        seconds = time.perf_counter() - start
        if int(result.steps.min()) != steps:
            raise AssertionError(f"{name}: some latents stopped early ({int(result.steps.min())} < {steps} steps)")
        # Per chunk: steps + 1 passes of G and Φ (Φ(z₀) first), steps × 3 calls of F, and the loop.
        per_chunk = seconds / (n / chunk)
        spent = {"G(z) %": (steps + 1) * split["G"], "Φ(images) %": (steps + 1) * split["Φ"],
                 "F x3 per step %": steps * split["F x3"]}
        rows.append({"benchmark": "edit", "case": f"{name} N={n} x {steps} steps (chunks of {chunk})",
                     "variant": "latentx (finite differences, batched)", "median ms": seconds * 1e3,
                     "latents/s": n / seconds, "latent-steps/s": n * steps / seconds,
                     **{k: 100 * v / per_chunk for k, v in spent.items()},
                     "loop %": 100 * (per_chunk - sum(spent.values())) / per_chunk})

    # --- the field alone: finite differences on a chunk vs a Jacobian per latent -------------
    dc = torch.zeros_like(c)
    dc[:, phi.names.index("happy")] = 0.2
    with torch.no_grad():
        field = edit.surrogate_field(mapping, zc, c, dc, 0)  # u = F(z, c + δc) − F(z, c) ≈ J_c·δc
    jac = lambda i: torch.autograd.functional.jacobian(lambda cc: mapping(zc[i:i + 1], cc), c[i:i + 1])  # noqa: E731
    by_jacobian = torch.stack([jac(i)[0, :, 0, :] @ dc[i] for i in range(8)])
    first_order = by_jacobian - field[:8]  # the finite difference's own error (F is not linear in c)
    with torch.no_grad():
        t_fd = measure(lambda: edit.surrogate_field(mapping, zc, c, dc, 0), device, warmup=1, repeats=repeats)
    t_jac = measure(lambda: [jac(i) for i in range(8)], device, warmup=1, repeats=repeats)
    rows.append({"benchmark": "edit", "case": f"SGF field without corrections, {chunk} latents",
                 "variant": "latentx: F(z, c + δc) − F(z, c), batched", "median ms": t_fd.ms,
                 "latents/s": chunk / t_fd.median})
    rows.append({"benchmark": "edit", "case": f"SGF field without corrections, {chunk} latents",
                 "variant": "Jacobian ∂F/∂c per latent (autograd)", "median ms": t_jac.ms * chunk / 8,
                 "latents/s": 8 / t_jac.median, "latentx x": (t_jac.median / 8) / (t_fd.median / chunk),
                 "|J·δc − field| / |field|": float(first_order.norm() / field[:8].norm())})

    # --- the public approach: a Jacobian per latent, one latent at a time ------------------
    delta_c = torch.zeros(1, len(phi.names), device=device)
    delta_c[0, phi.names.index("happy")] = 0.2

    def public():
        for i in range(public_n):
            zi = z[i:i + 1]
            with torch.no_grad():
                ci = phi(G(zi))  # Φ(z₀), as latentx's runs begin
            for _ in range(steps):
                zi, ci = public_sgf_step(G, phi, mapping, zi, ci, delta_c)
    synchronize(device)
    start = time.perf_counter()
    public()
    synchronize(device)
    public_s = time.perf_counter() - start
    latentx_rate = rows[0]["latents/s"]
    rows.append({"benchmark": "edit", "case": f"SGF, {steps} steps, {public_n} latents one at a time",
                 "variant": "public SGF (Jacobian per latent)", "median ms": public_s * 1e3,
                 "latents/s": public_n / public_s, "latent-steps/s": public_n * steps / public_s,
                 "latentx x": latentx_rate / (public_n / public_s)})

    # --- InterFaceGAN boundaries for all attributes ------------------------------------------
    case = f"InterFaceGAN, {len(bank.names)} attributes, {bank_size} latents"
    fit = lambda: edit.interfacegan_boundaries(bank, device=device)  # noqa: E731
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sklearn = None
    extra = {}
    if sklearn is not None:
        cosine = torch.nn.functional.cosine_similarity(fit().normals.cpu(), sklearn_boundaries(bank), dim=1)
        if float(cosine.min()) < 0.99:
            raise AssertionError(f"InterFaceGAN normals disagree with scikit-learn's (min cosine {float(cosine.min()):.4f})")
        extra = {"min cosine": float(cosine.min())}
    t = measure(fit, device, warmup=1, repeats=max(3, repeats // 3), max_seconds=20.0)
    rows.append({"benchmark": "edit", "case": case, "variant": "latentx batched SVM (torch)", "median ms": t.ms,
                 **extra})
    if sklearn is not None:
        t_sk = measure(lambda: sklearn_boundaries(bank), torch.device("cpu"), warmup=0,
                       repeats=max(3, repeats // 3), max_seconds=20.0)
        rows.append({"benchmark": "edit", "case": case, "variant": "scikit-learn SVC per attribute (the repo)",
                     "median ms": t_sk.ms, "latentx x": t_sk.median / t.median})
    return rows


def sklearn_boundaries(bank) -> torch.Tensor:
    """InterFaceGAN's ``train_boundary`` the repository's way: one scikit-learn
    ``SVC(kernel="linear", C=1)`` per attribute, on the same training sets as latentx's."""
    from sklearn import svm

    _, x, y, _, _ = edit.interfacegan_training_sets(bank)
    normals = []
    for xj, yj in zip(x.double().numpy(), y.numpy()):
        w = torch.tensor(svm.SVC(kernel="linear", C=1.0).fit(xj, yj).coef_[0], dtype=torch.float32)
        normals.append(w / w.norm())
    return torch.stack(normals)
