"""The bad-input sweep (issue 19): every public function, module and command-line tool, given a
bad argument, raises ValueError or TypeError whose message names that argument — never a
crash from deep inside, a hang, or a silent NaN.

Each case is (call, name): ``call()`` must raise ValueError/TypeError (FileNotFoundError for
a path that names no file, as everywhere in latentx) with ``name`` in the message. NaN / inf
inputs are among the cases: they must be refused, not computed through.
The `latentx edit` command and `latentx.edit` / `latentx.attributes` are not covered yet.
"""

import contextlib
import io
import signal

import numpy as np
import pytest
import torch
from torch import nn

import latentx
from latentx import advlat, cli, losses, metrics, models, ops, synthetic, transforms
from latentx.cma import BatchedCMAES, CMAEvolutionStrategy
from latentx.poisson import poisson_blend

NAN, INF = float("nan"), float("inf")


@pytest.fixture(autouse=True)
def _no_hang():
    """A bad argument must fail fast: 60 s is far beyond any of these calls."""
    if not hasattr(signal, "SIGALRM"):  # not on Windows
        yield
        return

    def timeout(signum, frame):
        raise TimeoutError("a bad-input call hung for 60 s")

    old = signal.signal(signal.SIGALRM, timeout)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def nan_at(t: torch.Tensor, value: float = NAN) -> torch.Tensor:
    """A copy of ``t`` with ``value`` at its centre (inside every region these cases use)."""
    t = t.clone()
    t[tuple(n // 2 for n in t.shape)] = value
    return t


# Small inputs, built once (cheap; every case makes its own copies where it changes them).
Z, GRAD = torch.zeros(4, 3), torch.ones(4, 3)
B, LAM, D = 2, 5, 3
NOISE, MEAN, SIGMA = torch.randn(B, LAM, D), torch.zeros(B, D), torch.ones(B)
EIGVECS, SQRT_EIG = torch.eye(D).repeat(B, 1, 1), torch.ones(B, D)
COV, PC, Y, W, DECAY = torch.eye(D).repeat(B, 1, 1), torch.zeros(B, D), torch.randn(B, 4, D), torch.full((4,), 0.25), torch.ones(B)
FEAT, LIN = torch.randn(2, 4, 5, 5), torch.rand(4)
IMG, GRID = torch.rand(2, 3, 8, 8), torch.rand(2, 6, 6, 2) * 2 - 1
THETA = torch.tensor([[1.0, 0, 0], [0, 1, 0]]).repeat(2, 1, 1)
RING_G, RING_D = synthetic.ring_generator(), synthetic.ring_discriminator()
ZR = torch.randn(4, 2)
NET = nn.Sequential(nn.Linear(4, 3 * 16 * 16), nn.Unflatten(1, (3, 16, 16)), nn.Tanh())
GEN = models.Generator(NET, 4)
PHOTO = torch.rand(1, 3, 16, 16) * 2 - 1
REAL, FAKE = torch.randn(40, 5), torch.randn(30, 5)
SRC, TGT = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
REGION = torch.zeros(16, 16)
REGION[4:12, 4:12] = 1
LP = latentx.LPIPS(pnet_rand=True, pretrained=False)  # AlexNet: inputs of 31×31 and up


def refine(**kw):
    args = {**dict(steps=2, step_size=0.1, progress=False), **kw}
    z = args.pop("z", ZR)
    return advlat.refine(RING_G, RING_D, z, **args)


def hard_pair(**kw):
    args = {**dict(steps=2, step_size=0.01, radius=0.1), **kw}
    return advlat.hard_pair(RING_G, args.pop("z0", ZR), **args)


def batched_cmaes(**kw):
    args = {**dict(mean0=torch.zeros(2, 3), sigma0=0.5), **kw}
    return BatchedCMAES(**args)


def front(x0=(0.0, 0.0, 0.0), sigma0=0.5, **opts):
    return CMAEvolutionStrategy(x0, sigma0, {"verbose": -9, **opts})


def project(**kw):
    return latentx.project(GEN, kw.pop("images", PHOTO), **kw)


def blend(**kw):
    args = {**dict(source=SRC, target=TGT, region=REGION), **kw}
    return poisson_blend(args.pop("source"), args.pop("target"), args.pop("region"), **args)


C = pytest.param
CASES = [
    # --- ops (those that give good errors today; helper work on the rest is in progress) ---
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size="a"), "step_size", id="ifgsm_step-step_size-str"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=-1.0), "step_size", id="ifgsm_step-step_size-negative"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=NAN), "step_size", id="ifgsm_step-step_size-nan"),
    C(lambda: ops.ifgsm_step(Z, torch.ones(4, 2), step_size=0.1), "grad", id="ifgsm_step-grad-shape"),
    C(lambda: ops.ifgsm_step(Z, GRAD.double(), step_size=0.1), "grad", id="ifgsm_step-grad-dtype"),
    C(lambda: ops.ifgsm_step(Z.long(), GRAD, step_size=0.1), "z", id="ifgsm_step-z-int"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=0.1, anchor=torch.zeros(3), radius=0.1), "anchor", id="ifgsm_step-anchor-shape"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=0.1, anchor=Z, radius=-1.0), "radius", id="ifgsm_step-radius-negative"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=0.1, lower=1.0, upper=0.0), "lower", id="ifgsm_step-bounds-order"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=0.1, lower=NAN), "lower", id="ifgsm_step-lower-nan"),
    C(lambda: ops.ifgsm_step(Z, GRAD, step_size=0.1, impl="fast"), "impl", id="ifgsm_step-impl"),
    C(lambda: ops.cma_sample(torch.randn(B, LAM), MEAN, SIGMA, EIGVECS, SQRT_EIG), "noise", id="cma_sample-noise"),
    C(lambda: ops.cma_sample(NOISE, torch.zeros(B, D + 1), SIGMA, EIGVECS, SQRT_EIG), "mean", id="cma_sample-mean"),
    C(lambda: ops.cma_sample(NOISE, MEAN, torch.ones(B + 1), EIGVECS, SQRT_EIG), "sigma", id="cma_sample-sigma"),
    C(lambda: ops.cma_sample(NOISE, MEAN, SIGMA, torch.eye(D), SQRT_EIG), "eigvecs", id="cma_sample-eigvecs"),
    C(lambda: ops.cma_sample(NOISE, MEAN, SIGMA, EIGVECS, torch.ones(D)), "sqrt_eigvals", id="cma_sample-sqrt_eigvals"),
    C(lambda: ops.cma_sample(NOISE, MEAN, SIGMA, EIGVECS, SQRT_EIG, lower=1.0, upper=0.0), "lower", id="cma_sample-bounds"),
    C(lambda: ops.cma_covariance_update(torch.eye(D), PC, Y, W, DECAY, 0.1, 0.1), "cov", id="cma_cov-cov"),
    C(lambda: ops.cma_covariance_update(COV, torch.zeros(B, D + 1), Y, W, DECAY, 0.1, 0.1), "pc", id="cma_cov-pc"),
    C(lambda: ops.cma_covariance_update(COV, PC, torch.randn(B, 4, D + 1), W, DECAY, 0.1, 0.1), "y", id="cma_cov-y"),
    C(lambda: ops.cma_covariance_update(COV, PC, Y, torch.ones(5), DECAY, 0.1, 0.1), "weights", id="cma_cov-weights"),
    C(lambda: ops.cma_covariance_update(COV, PC, Y, W, torch.ones(B + 1), 0.1, 0.1), "decay", id="cma_cov-decay"),
    C(lambda: ops.lpips_head(FEAT, torch.randn(2, 4, 6, 5), LIN), "feat1", id="lpips_head-feat1"),
    C(lambda: ops.lpips_head(FEAT, FEAT, torch.rand(3)), "weight", id="lpips_head-weight"),
    C(lambda: ops.lpips_head(FEAT, FEAT, LIN, torch.ones(2, 2, 5, 5)), "mask", id="lpips_head-mask-shape"),
    C(lambda: ops.lpips_head(FEAT, FEAT, LIN, torch.ones(2, 1, 5, 5), spatial=True), "mask", id="lpips_head-mask-spatial"),
    C(lambda: ops.filtered_grid_sample(IMG[0], GRID), "input", id="filtered_grid_sample-input"),
    C(lambda: ops.filtered_grid_sample(IMG, torch.rand(2, 6, 6, 3)), "grid", id="filtered_grid_sample-grid"),
    C(lambda: ops.filtered_grid_sample(IMG, GRID, padding_mode="wrap"), "padding_mode", id="filtered_grid_sample-padding"),
    C(lambda: ops.filtered_grid_sample(IMG, GRID, filter="box"), "filter", id="filtered_grid_sample-filter"),
    C(lambda: ops.filtered_grid_sample(IMG, GRID, stretch=torch.ones(3, 3)), "stretch", id="filtered_grid_sample-stretch"),
    C(lambda: ops.warp_affine(IMG, THETA, (4,)), "size", id="warp_affine-size-length"),
    C(lambda: ops.warp_affine(IMG, torch.eye(3)[None].repeat(2, 1, 1), (4, 4)), "theta", id="warp_affine-theta"),
    # --- BatchedCMAES / CMAEvolutionStrategy ---
    C(lambda: batched_cmaes(mean0=torch.zeros(3)), "mean0", id="BatchedCMAES-mean0-1d"),
    C(lambda: batched_cmaes(mean0=torch.full((2, 3), NAN)), "mean0", id="BatchedCMAES-mean0-nan"),
    C(lambda: batched_cmaes(sigma0=-0.5), "sigma0", id="BatchedCMAES-sigma0-negative"),
    C(lambda: batched_cmaes(sigma0=NAN), "sigma0", id="BatchedCMAES-sigma0-nan"),
    C(lambda: batched_cmaes(popsize=1), "popsize", id="BatchedCMAES-popsize-1"),
    C(lambda: batched_cmaes(popsize=5.5), "popsize", id="BatchedCMAES-popsize-float"),
    C(lambda: batched_cmaes(bounds=(1.0, 0.0)), "bounds", id="BatchedCMAES-bounds"),
    C(lambda: batched_cmaes(weights="x"), "weights", id="BatchedCMAES-weights"),
    C(lambda: batched_cmaes(tolfun=-1), "tolfun", id="BatchedCMAES-tolfun"),
    C(lambda: front(x0=np.zeros((2, 3))), "x0", id="CMAEvolutionStrategy-x0-2d"),
    C(lambda: front(x0=[0.0, NAN]), "x0", id="CMAEvolutionStrategy-x0-nan"),
    C(lambda: front(x0=[]), "x0", id="CMAEvolutionStrategy-x0-empty"),
    C(lambda: front(sigma0=-1.0), "sigma0", id="CMAEvolutionStrategy-sigma0"),
    C(lambda: front(popsize=0), "popsize", id="CMAEvolutionStrategy-popsize"),
    C(lambda: front(foo=1), "foo", id="CMAEvolutionStrategy-unknown-option"),
    C(lambda: front(bounds=[0.0]), "bounds", id="CMAEvolutionStrategy-bounds"),
    C(lambda: (lambda es: es.tell([[0.0, 0.0, 0.0]], [1.0]))(front()), "solutions", id="CMAEvolutionStrategy-tell"),
    # --- LPIPS ---
    C(lambda: latentx.LPIPS(net="resnet", pnet_rand=True), "net", id="LPIPS-net"),
    C(lambda: latentx.LPIPS(version="0.2", pnet_rand=True), "version", id="LPIPS-version"),
    C(lambda: latentx.LPIPS(pnet_rand=True, model_path="no/such/lin.pth"), "model_path", id="LPIPS-model_path-missing"),
    C(lambda: LP(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 16, 16)), "in1", id="LPIPS-in1-size"),
    C(lambda: LP(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)), "in1", id="LPIPS-in1-too-small"),
    # --- transforms ---
    C(lambda: transforms.SpatialTransform(torch.ones(3)), "params", id="SpatialTransform-params"),
    C(lambda: transforms.SpatialTransform.identity(3).apply(IMG), "params", id="SpatialTransform-batch"),
    C(lambda: transforms.SpatialTransform.identity(2).apply(IMG, (4,)), "size", id="SpatialTransform-size"),
    C(lambda: transforms.SpatialTransform.identity(2).apply(IMG, padding_mode="wrap"), "padding_mode", id="SpatialTransform-padding"),
    C(lambda: transforms.SpatialTransform.identity(3).apply(IMG[0]), "image", id="SpatialTransform-image-3d"),
    C(lambda: transforms.SpatialTransform(torch.tensor([NAN, 1.0, 0.0, 0.0])), "params", id="SpatialTransform-params-nan"),
    C(lambda: transforms.SpatialTransform(torch.tensor([1.0, 1.0, INF, 0.0])), "params", id="SpatialTransform-params-inf"),
    C(lambda: transforms.SpatialTransform(torch.tensor([0.0, 1.0, 0.0, 0.0])).inverse(), "params", id="SpatialTransform-inverse-zero-scale"),
    C(lambda: transforms.SpatialTransform.identity(1).valid_region((4,)), "size", id="SpatialTransform-valid_region-size"),
    C(lambda: transforms.SpatialTransform.from_boxes(torch.ones(2, 1, 8, 8), [0, 0, 1]), "generator_box", id="from_boxes-box"),
    C(lambda: transforms.SpatialTransform.from_boxes(torch.ones(8, 8), [-0.5, -0.5, 0.5, 0.5]), "mask", id="from_boxes-mask"),
    C(lambda: transforms.SpatialTransform.from_boxes(torch.ones(1, 1, 8, 8), [0, 0, 0, 1]), "generator_box", id="from_boxes-box-empty"),
    C(lambda: transforms.BrightnessTransform(torch.ones(3)).apply(torch.rand(2, 3, 4, 4)), "gamma", id="BrightnessTransform-gamma"),
    # --- models / project ---
    C(lambda: models.Generator(NET, 0), "z_dim", id="Generator-z_dim"),
    C(lambda: models.Generator(NET, 4.5), "z_dim", id="Generator-z_dim-float"),
    C(lambda: models.load("nope"), "spec", id="models.load-spec"),
    C(lambda: latentx.project(RING_G, PHOTO), "generator", id="project-generator"),
    C(lambda: project(method="sgd"), "method", id="project-method"),
    C(lambda: project(images=torch.rand(1, 3, 8, 8)), "images", id="project-images-small"),
    C(lambda: project(images=nan_at(PHOTO)), "images", id="project-images-nan"),
    C(lambda: project(images=PHOTO[0], beta=0), "images", id="project-images-3d-too-small-for-lpips"),
    C(lambda: project(), "generator", id="project-generator-too-small-for-lpips"),
    C(lambda: project(seeds=0), "seeds", id="project-seeds"),
    C(lambda: project(seeds=2.5), "seeds", id="project-seeds-float"),
    C(lambda: project(meta_steps=0), "meta_steps", id="project-meta_steps"),
    C(lambda: project(lr=-1), "lr", id="project-lr"),
    C(lambda: project(beta=NAN), "beta", id="project-beta-nan"),
    C(lambda: project(boxes=[[0, 0, 1]]), "boxes", id="project-boxes"),
    C(lambda: project(masks=torch.ones(1, 1, 8, 8)), "masks", id="project-masks"),
    C(lambda: project(background=2), "background", id="project-background"),
    C(lambda: project(transform="yes"), "transform", id="project-transform"),
    # --- refine / hard_pair / train_step (AdvLatGAN) ---
    C(lambda: refine(steps=2.0), "steps", id="refine-steps-float"),
    C(lambda: refine(steps=-1), "steps", id="refine-steps-negative"),
    C(lambda: refine(batch_size=2.5), "batch_size", id="refine-batch_size-float"),
    C(lambda: refine(batch_size=0), "batch_size", id="refine-batch_size-0"),
    C(lambda: refine(step_size=-0.1), "step_size", id="refine-step_size-negative"),
    C(lambda: refine(step_size=torch.ones(3)), "step_size", id="refine-step_size-shape"),
    C(lambda: refine(radius=NAN), "radius", id="refine-radius-nan"),
    C(lambda: refine(bounds=(1.0, -1.0)), "bounds", id="refine-bounds-order"),
    C(lambda: refine(bounds=2.0), "bounds", id="refine-bounds-number"),
    C(lambda: refine(loss="bce"), "loss", id="refine-loss"),
    C(lambda: refine(impl="fast"), "impl", id="refine-impl"),
    C(lambda: refine(z=nan_at(ZR)), "z", id="refine-z-nan"),
    C(lambda: refine(z=ZR.long()), "z", id="refine-z-int"),
    C(lambda: advlat.refine(lambda z: z, RING_D, ZR, steps=1, step_size=0.1), "G", id="refine-G"),
    C(lambda: hard_pair(radius=0.0), "radius", id="hard_pair-radius-0"),
    C(lambda: hard_pair(radius=None), "radius", id="hard_pair-radius-None"),
    C(lambda: hard_pair(steps=1.5), "steps", id="hard_pair-steps-float"),
    C(lambda: advlat.train_step(RING_G, RING_D, None, None, None, z_dim=2, batch_size=4, method="x"), "method", id="train_step-method"),
    C(lambda: advlat.train_step(RING_G, RING_D, None, None, None, z_dim=2.0, batch_size=4), "z_dim", id="train_step-z_dim"),
    C(lambda: advlat.train_step(RING_G, RING_D, None, None, None, z_dim=2, batch_size=0), "batch_size", id="train_step-batch_size"),
    # --- poisson_blend ---
    C(lambda: blend(source=nan_at(SRC)), "source", id="poisson_blend-source-nan"),
    C(lambda: blend(target=nan_at(TGT, INF)), "target", id="poisson_blend-target-inf"),
    C(lambda: blend(region=nan_at(REGION)), "region", id="poisson_blend-region-nan"),
    C(lambda: blend(source=SRC[0]), "source", id="poisson_blend-source-shape"),
    C(lambda: blend(region=torch.ones(8, 8)), "region", id="poisson_blend-region-shape"),
    C(lambda: blend(source=SRC.to(torch.uint8)), "source", id="poisson_blend-source-int"),
    C(lambda: blend(tol=0.0), "tol", id="poisson_blend-tol"),
    C(lambda: blend(max_iter=2.5), "max_iter", id="poisson_blend-max_iter"),
    # --- metrics ---
    C(lambda: metrics.fid(nan_at(REAL), FAKE), "real", id="fid-real-nan"),
    C(lambda: metrics.fid(REAL, nan_at(FAKE, -INF)), "fake", id="fid-fake-inf"),
    C(lambda: metrics.fid(REAL, FAKE[:, :3]), "feature size", id="fid-feature-size"),
    C(lambda: metrics.fid(REAL[:1], FAKE), "real", id="fid-real-one-row"),
    C(lambda: metrics.density_coverage(REAL, nan_at(FAKE)), "fake", id="density_coverage-fake-nan"),
    C(lambda: metrics.density_coverage(REAL, FAKE, k=2.0), "k", id="density_coverage-k-float"),
    C(lambda: metrics.density_coverage(REAL, FAKE, k=40), "k", id="density_coverage-k-large"),
    C(lambda: metrics.frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(4)), "cov2", id="frechet_distance-cov2"),
    C(lambda: metrics.extract_features(lambda x: x, REAL, batch_size=0), "batch_size", id="extract_features-batch_size"),
    # --- losses ---
    C(lambda: losses.discriminator_loss(torch.zeros(3), torch.zeros(3), "bce"), "kind", id="discriminator_loss-kind"),
    C(lambda: losses.generator_loss(torch.zeros(3), "hinge", reduction="avg"), "reduction", id="generator_loss-reduction"),
    C(lambda: losses.discriminator_loss(torch.zeros(3), torch.zeros(4, 2), "hinge"), "fake", id="discriminator_loss-shapes"),
    C(lambda: losses.gradient_penalty(lambda x: x.sum(1), torch.rand(3, 2), torch.rand(4, 2)), "fake", id="gradient_penalty-shapes"),
    C(lambda: losses.mode_seeking_loss(REAL, REAL, FAKE[:40], FAKE[:40] + 1, eps=-1e-5), "eps", id="mode_seeking_loss-eps-negative"),
    C(lambda: losses.mode_seeking_ratio(torch.zeros(3, 2), torch.zeros(4, 2), torch.zeros(3, 2), torch.zeros(3, 2)), "x2", id="mode_seeking_ratio-shapes"),
]


@pytest.mark.parametrize("call, name", CASES)
def test_bad_argument_is_named(call, name):
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as info:
        call()
    assert name in str(info.value), f"the error does not name {name!r}: {info.value}"


# --- command-line tools -----------------------------------------------------------------

RING = ["--generator", "latentx.synthetic:ring_generator", "--discriminator", "latentx.synthetic:ring_discriminator",
        "--num-latents", "8", "--z-dim", "2", "--no-progress"]

CLI_CASES = [
    C(["project", "{photo}", "--box", "1,2,3"], "--box", id="project-box-length"),
    C(["project", "{photo}", "--box", "10,10,5,20"], "--box", id="project-box-empty"),
    C(["project", "{photo}", "--box", "0,0,500,20"], "--box", id="project-box-outside"),
    C(["project", "{photo}", "{photo}", "--box", "0,0,5,5"], "--box", id="project-box-count"),
    C(["project", "{tmp}/missing.png"], "IMAGE", id="project-image-missing"),
    C(["project", "{photo}", "--method", "sgd"], "--method", id="project-method"),
    C(["project", "{photo}", "--work-size", "0"], "--work-size", id="project-work-size"),
    C(["project", "{photo}", "--context", "-1"], "--context", id="project-context"),
    C(["project", "{photo}", "--seeds", "0"], "--seeds", id="project-seeds"),
    C(["project", "{photo}", "--lr", "nan"], "--lr", id="project-lr-nan"),
    C(["project", "{photo}", "--beta", "-1"], "--beta", id="project-beta"),
    C(["project", "{photo}", "--finetune-steps", "-1"], "--finetune-steps", id="project-finetune-steps"),
    C(["project", "{photo}", "--device", "gpu0"], "--device", id="project-device"),
    C(["project", "{photo}", "--generator", "nomod:factory"], "nomod", id="project-generator"),
    C(["project", "{photo}", "--threads", "0"], "--threads", id="project-threads"),
    C(["demo", "--seeds", "-2"], "--seeds", id="demo-seeds"),
    C(["demo", "--meta-steps", "0"], "--meta-steps", id="demo-meta-steps"),
    C(["demo", "--finetune-steps", "-1"], "--finetune-steps", id="demo-finetune-steps"),
    C(["demo", "--threads", "two"], "--threads", id="demo-threads"),
    C(["refine", *RING, "--steps", "-1"], "--steps", id="refine-steps"),
    C(["refine", *RING, "--steps", "1.5"], "--steps", id="refine-steps-float"),
    C(["refine", *RING, "--step-size", "-1"], "--step-size", id="refine-step-size"),
    C(["refine", *RING, "--radius", "nan"], "--radius", id="refine-radius-nan"),
    C(["refine", *RING, "--lower", "1", "--upper", "0"], "--lower", id="refine-bounds"),
    C(["refine", *RING, "--batch-size", "0"], "--batch-size", id="refine-batch-size"),
    C(["refine", *RING, "--shard-size", "0"], "--shard-size", id="refine-shard-size"),
    C(["refine", *RING, "--loss", "bce"], "--loss", id="refine-loss"),
    C(["refine", *RING, "--threads", "0"], "--threads", id="refine-threads"),
    C(["refine", *RING[:4], "--num-latents", "8", "--no-progress"], "--z-dim", id="refine-z-dim-missing"),
    C(["refine", *RING, "--generator", "nomod:factory"], "--generator", id="refine-generator"),
    C(["refine", *RING, "--device", "gpu0"], "--device", id="refine-device"),
    C(["bench", "--repeats", "0"], "--repeats", id="bench-repeats"),
    C(["bench", "--only", "foo"], "--only", id="bench-only"),
    C(["bench", "--threads", "0"], "--threads", id="bench-threads"),
    C(["info", "--device", "tpu"], "--device", id="info-device"),
]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    from latentx.cli.project import write_png

    path = tmp_path_factory.mktemp("photo") / "photo.png"
    write_png(path, (np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    return path


@pytest.mark.parametrize("argv, flag", CLI_CASES)
def test_cli_bad_flag_is_named(argv, flag, photo, tmp_path):
    """Exit status 2 (argparse's, or the command's own) with a one-line message naming the
    flag, before any work: nothing is written to --out, no traceback."""
    out = tmp_path / "out"
    argv = [a.format(photo=photo, tmp=tmp_path) for a in argv] + ([] if argv[0] in ("bench", "info") else ["--out", str(out)])
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(argv)
        except SystemExit as e:
            status = e.code
    message = err.getvalue() + ("" if isinstance(status, int) else str(status))
    assert status not in (0, None), f"accepted: {argv}"
    assert flag in message, f"the message does not name {flag!r}: {message}"
    assert "Traceback" not in message
    assert not out.exists() or not any(out.rglob("*.json")), "a bad setting must not leave a run behind"


def test_sweep_covers_every_public_entry():
    """The sweep lists a case for each public name it promises to cover."""
    ids = {p.id.split("-")[0] for p in CASES} | {"cli-" + p.id.split("-")[0] for p in CLI_CASES}
    promised = {"ifgsm_step", "cma_sample", "cma_cov", "lpips_head", "filtered_grid_sample", "warp_affine",
                "BatchedCMAES", "CMAEvolutionStrategy", "LPIPS", "SpatialTransform", "from_boxes",
                "BrightnessTransform", "Generator", "project", "refine", "hard_pair", "train_step",
                "poisson_blend", "fid", "density_coverage", "frechet_distance", "extract_features",
                "discriminator_loss", "generator_loss", "gradient_penalty", "mode_seeking_ratio", "mode_seeking_loss",
                "cli-project", "cli-demo", "cli-refine", "cli-bench", "cli-info"}
    assert promised <= ids, sorted(promised - ids)
