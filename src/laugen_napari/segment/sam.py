"""Segment Anything adapter on the official ``segment_anything`` package (the ``sam`` extra).

- :func:`load_sam` builds vit_b / vit_l / vit_h with the package's registry builders and loads a
  user-named checkpoint (MedSAM checkpoints load as ``vit_b``); a missing, corrupt or
  wrong-architecture file gives a one-line error naming the file and the expected type.
- :class:`SamBackend` windows a slice to 8-bit (window from the image's contrast limits), caches the
  image embedding per (axis, index, window, slice content) and predicts a 2D mask from positive /
  negative points and a box. 3D runs propagate slice by slice (:mod:`.propagate`).
- :func:`build_tiny_sam` builds a small randomly initialised SAM from the same classes, for tests
  and benchmarks where no weights exist.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from functools import partial
from typing import Any

import numpy as np
import torch

from .prompts import CancelFn, ProgressFn, Prompts, SlicePrompts, Window, normalise_window, take_slice, \
    window_to_uint8

#: Encoder width and depth of each registry architecture, used to recognise a checkpoint's type.
ARCHITECTURES: dict[str, tuple[int, int]] = {"vit_b": (768, 12), "vit_l": (1024, 24), "vit_h": (1280, 32)}
_ALIASES = {"medsam": "vit_b", "default": "vit_h"}


def _import_without_triton_after_opengl() -> Any:
    """Import ``segment_anything`` (which imports torchvision → torch._dynamo → triton).

    Triton ships its own LLVM; loading it into a process where Mesa's OpenGL (llvmpipe, radeonsi)
    already runs — a napari viewer on screen — crashes with a segmentation fault. Triton only
    serves CUDA kernels, so when torch sees no GPU and a vispy/Qt canvas is loaded, the import is
    made with ``triton`` masked (torch then reports no Triton) and the mask is removed afterwards.
    """
    mask = ("triton" not in sys.modules and "torchvision" not in sys.modules and "vispy" in sys.modules
            and not torch.cuda.is_available())
    if not mask:
        import segment_anything

        return segment_anything
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    try:
        import segment_anything
    finally:
        del sys.modules["triton"]
    return segment_anything


def _require_segment_anything() -> Any:
    try:
        segment_anything = _import_without_triton_after_opengl()
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "Segment Anything needs the 'sam' extra: pip install 'laugen-napari[sam]' "
            "(segment-anything and torchvision)"
        ) from exc
    return segment_anything


def normalise_model_type(model_type: str) -> str:
    """Return the registry name (vit_b, vit_l, vit_h) for ``model_type`` ('medsam' → vit_b)."""
    key = str(model_type).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in ARCHITECTURES:
        raise ValueError(f"unknown SAM model type {model_type!r}: use one of vit_b, vit_l, vit_h (MedSAM: vit_b)")
    return key


def _state_dict_architecture(state: dict) -> str | None:
    """Guess the architecture of a SAM state dict from its encoder width and depth."""
    weight = state.get("image_encoder.patch_embed.proj.weight")
    if weight is None or not hasattr(weight, "shape"):
        return None
    width = int(weight.shape[0])
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    for name, (w, d) in ARCHITECTURES.items():
        if (w, d) == (width, depth):
            return name
    return f"an unknown SAM variant (encoder width {width}, depth {depth})"


def read_checkpoint(path: str | os.PathLike, model_type: str) -> dict:
    """Read a SAM state dict from ``path`` and check it matches ``model_type``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a
    PyTorch checkpoint or holds another architecture; the message names the file and the type.
    """
    arch = normalise_model_type(model_type)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SAM checkpoint not found: {path} (expected a {arch} checkpoint file)")
    from ..io.torch_files import read_torch_file

    state = read_torch_file(path, what=f"SAM checkpoint (a {arch} state dict)")
    if isinstance(state, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(state.get(wrapper), dict) and "image_encoder.patch_embed.proj.weight" not in state:
                state = state[wrapper]
    if not isinstance(state, dict) or not any(str(k).startswith("image_encoder.") for k in state):
        raise ValueError(f"SAM checkpoint {path} holds no Segment Anything weights (expected a {arch} state dict)")
    found = _state_dict_architecture(state)
    if found != arch:
        raise ValueError(f"SAM checkpoint {path} is {found or 'not a recognisable SAM'}, "
                         f"not the expected model type {arch}; choose the matching model type")
    return state


def load_sam(checkpoint: str | os.PathLike, model_type: str = "vit_b",
             device: str | torch.device | None = "auto") -> torch.nn.Module:
    """Build the ``model_type`` SAM with the package's registry and load ``checkpoint`` into it."""
    sa = _require_segment_anything()
    arch = normalise_model_type(model_type)
    state = read_checkpoint(checkpoint, arch)
    model = sa.sam_model_registry[arch](checkpoint=None)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"SAM checkpoint {os.fspath(checkpoint)} does not fit model type {arch}: {first}") from None
    from ..core.device import resolve_device

    return model.to(resolve_device(device)).eval()


def build_tiny_sam(seed: int = 0, img_size: int = 64, embed_dim: int = 32, prompt_dim: int = 32) -> torch.nn.Module:
    """A small randomly initialised SAM built from the package's classes (tests, benchmarks).

    ``img_size`` is the model's input side in pixels (slices are resized to it, like 1024 for SAM).
    """
    sa = _require_segment_anything()
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    del sa
    torch.manual_seed(seed)
    patch = 8
    grid = img_size // patch
    model = Sam(
        image_encoder=ImageEncoderViT(img_size=img_size, patch_size=patch, embed_dim=embed_dim, depth=2,
                                      num_heads=2, mlp_ratio=2.0, out_chans=prompt_dim, qkv_bias=True,
                                      norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                      window_size=4, global_attn_indexes=(1,)),
        prompt_encoder=PromptEncoder(embed_dim=prompt_dim, image_embedding_size=(grid, grid),
                                     input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=prompt_dim,
                                 transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, num_heads=2,
                                                               mlp_dim=64),
                                 iou_head_depth=2, iou_head_hidden_dim=32),
    )
    return model.eval()


class SamBackend:
    """SAM on 2D slices with a per-slice embedding cache; 3D by slice-to-slice propagation."""

    name = "sam"

    def __init__(self, model: torch.nn.Module, model_type: str = "custom", checkpoint: str | None = None,
                 cache_size: int = 32) -> None:
        _require_segment_anything()
        from segment_anything.utils.transforms import ResizeLongestSide

        self.model = model.eval()
        self.model_type = model_type
        self.checkpoint = checkpoint
        self.transform = ResizeLongestSide(model.image_encoder.img_size)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, tuple[int, int], tuple[int, int]]] = OrderedDict()
        self.encoder_runs = 0

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, model_type: str = "vit_b",
                        device: str | torch.device | None = "auto") -> "SamBackend":
        """Load ``checkpoint`` as ``model_type`` (see :func:`load_sam`)."""
        arch = normalise_model_type(model_type)
        return cls(load_sam(checkpoint, arch, device), model_type=arch, checkpoint=os.fspath(checkpoint))

    def describe(self) -> str:
        """Human-readable name of the backend for the UI."""
        source = f"file {os.path.basename(self.checkpoint)}" if self.checkpoint else "in-memory model"
        return f"Segment Anything ({self.model_type}, {source})"

    @property
    def device(self) -> torch.device:
        """The torch device the model runs on."""
        return next(self.model.parameters()).device

    def clear_cache(self) -> None:
        """Forget every cached slice embedding."""
        self._cache.clear()

    def embedding(self, volume: np.ndarray, axis: int, index: int, window: Window) -> tuple:
        """(features, input_size, original_size) of one windowed slice, computed once and cached."""
        image8 = window_to_uint8(take_slice(volume, axis, index), window)
        digest = hashlib.blake2b(image8.tobytes(), digest_size=16).hexdigest()
        key = (int(axis), int(index), tuple(window), image8.shape, digest)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        rgb = np.repeat(image8[:, :, None], 3, axis=2)
        resized = self.transform.apply_image(rgb)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None].float()
        with torch.inference_mode():
            features = self.model.image_encoder(self.model.preprocess(tensor))
        self.encoder_runs += 1
        entry = (features, tuple(resized.shape[:2]), tuple(image8.shape))
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def predict(self, volume: np.ndarray, axis: int, index: int, prompts: SlicePrompts,
                window: Window) -> tuple[np.ndarray, float]:
        """One mask (bool, slice shape) and SAM's predicted IoU for one box (or none) plus the points."""
        features, input_size, original_size = self.embedding(volume, axis, index, window)
        coords = np.concatenate([prompts.positive, prompts.negative]).astype(float)
        labels = np.concatenate([np.ones(len(prompts.positive)), np.zeros(len(prompts.negative))])
        points = box = None
        if len(coords):
            xy = self.transform.apply_coords(coords[:, ::-1] + 0.5, original_size)  # (row, col) → pixel-centre (x, y)
            points = (torch.as_tensor(xy[None], dtype=torch.float, device=self.device),
                      torch.as_tensor(labels[None], dtype=torch.int, device=self.device))
        if prompts.boxes:
            r0, c0, r1, c1 = prompts.boxes[0]
            xyxy = self.transform.apply_boxes(np.array([[c0, r0, c1 + 1, r1 + 1]], dtype=float), original_size)
            box = torch.as_tensor(xyxy, dtype=torch.float, device=self.device)
        multimask = box is None and len(coords) == 1
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(points=points, boxes=box, masks=None)
            low_res, iou = self.model.mask_decoder(
                image_embeddings=features, image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
            masks = self.model.postprocess_masks(low_res, input_size, original_size)
        best = int(torch.argmax(iou[0]))
        mask = (masks[0, best] > self.model.mask_threshold).cpu().numpy()
        return mask, float(iou[0, best])

    def segment_slice(self, volume: np.ndarray, axis: int, index: int, prompts: SlicePrompts,
                      window: Window | None = None, cancel: CancelFn | None = None) -> np.ndarray:
        """2D mask on slice ``index`` along ``axis``; several boxes give the union of their masks."""
        if prompts.is_empty:
            raise ValueError(f"no positive click or box on slice {index} along axis {axis}")
        win = normalise_window(window, volume)
        if len(prompts.boxes) <= 1:
            return self.predict(volume, axis, index, prompts, win)[0]
        out = np.zeros(take_slice(volume, axis, index).shape, dtype=bool)
        for box in prompts.boxes:
            inside = [p for p in prompts.positive if box[0] <= p[0] <= box[2] and box[1] <= p[1] <= box[3]]
            one = SlicePrompts(np.array(inside, dtype=np.int64).reshape(-1, 2), prompts.negative, (box,))
            out |= self.predict(volume, axis, index, one, win)[0]
        return out

    def segment_volume(self, volume: np.ndarray, axis: int, prompts: Prompts, window: Window | None = None,
                       progress: ProgressFn | None = None, cancel: CancelFn | None = None) -> np.ndarray:
        """3D mask: each prompted slice segmented, then propagated both ways along ``axis``."""
        from .propagate import propagate_from_prompts

        win = normalise_window(window, volume)
        return propagate_from_prompts(
            volume.shape, axis, prompts,
            lambda index, sp: self.segment_slice(volume, axis, index, sp, win),
            progress=progress, cancel=cancel)
