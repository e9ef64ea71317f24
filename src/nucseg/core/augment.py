"""Random training crops: one affine warp per array that computes only the output window.

Warping the crop alone, instead of augmenting the whole image and cutting a window out of it,
keeps the cost per crop independent of the image size (up to 1040x1388 in DSB2018), which is
what lets two CPU cores feed the network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms. The defaults switch every transform off, so a key missing
    from params.yaml means "not augmented" rather than some hidden strength."""

    flip: bool = False
    rot90: bool = False
    rotate_degrees: float = 0.0
    shear: float = 0.0
    scale_min: float = 1.0
    scale_max: float = 1.0
    brightness: float = 0.0
    contrast: float = 0.0
    invert: float = 0.0
    # What users bring beyond DSB: dim or saturated nuclei, other stains, blur and noise.
    gamma: float = 0.0            # half-width of log(gamma)
    intensity_min: float = 1.0    # intensities scaled by a factor in [intensity_min, 1] (dim images)
    hed_jitter: float = 0.0       # haematoxylin/eosin/DAB stain jitter (RGB input only)
    hue: float = 0.0              # hue shift, as a fraction of the colour circle (RGB input only)
    saturation: float = 0.0       # saturation scaled in [1 - s, 1 + s] (RGB input only)
    greyscale: float = 0.0        # probability of dropping colour
    blur_sigma: float = 0.0       # Gaussian blur sigma drawn in [0, blur_sigma]
    noise: float = 0.0            # Gaussian noise sd drawn in [0, noise]

    def __post_init__(self) -> None:
        # Checked here so a bad params.yaml fails before training, not as NaNs mid-epoch.
        if not 0.0 < self.scale_min <= self.scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {self.scale_min}, {self.scale_max}")
        if not 0.0 <= self.contrast < 1.0:
            raise ValueError(f"contrast must be in [0, 1), got {self.contrast}")
        if not 0.0 <= self.invert <= 1.0:
            raise ValueError(f"invert is a probability, got {self.invert}")
        if min(self.rotate_degrees, self.shear, self.brightness, self.gamma, self.hed_jitter, self.hue,
               self.saturation, self.blur_sigma, self.noise) < 0.0:
            raise ValueError("rotate_degrees, shear, brightness, gamma, hed_jitter, hue, saturation, blur_sigma and "
                             "noise are half-widths or maxima and must be >= 0")
        if not 0.0 < self.intensity_min <= 1.0:
            raise ValueError(f"intensity_min must be in (0, 1], got {self.intensity_min}")
        if not 0.0 <= self.greyscale <= 1.0 or self.saturation > 1.0:
            raise ValueError(f"greyscale is a probability and saturation at most 1, got {self.greyscale}, "
                             f"{self.saturation}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> AugmentConfig:
        """From the `augment` section of params.yaml; unknown keys are ignored so the section can grow."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in params.items() if key in names})

    @classmethod
    def none(cls) -> AugmentConfig:
        return cls()


def _random_center(extent: int, size: int, rng: np.random.Generator) -> int:
    """Centre such that the unwarped crop lies inside the image, or, for an image smaller than the
    crop, covers all of it: no crop is mostly reflected padding."""
    low, high = sorted((0, extent - size))
    return int(rng.integers(low, high + 1)) + size // 2


def _crop_to_source(
    size: int, center: tuple[float, float], angle: float, shear: float, scale: float
) -> np.ndarray:
    """2x3 matrix taking crop pixel (x, y) to source pixel (x, y); `center` is (row, col)."""
    cos, sin = np.cos(angle), np.sin(angle)
    linear = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) / scale
    half = size // 2
    offset = np.array([center[1], center[0]]) - linear @ np.array([half, half])
    return np.hstack([linear, offset[:, None]])


def sample_crop(
    image: np.ndarray,
    target: np.ndarray,
    size: int,
    rng: np.random.Generator,
    cfg: AugmentConfig,
    center: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented `size` x `size` crop of a uint8 image (float32 in [0, 1]) and its 0/1 target.

    `center` is (row, col) in the source and defaults to a random one. Every random number is
    drawn whatever `cfg` enables, so switching one transform off leaves the crop positions and the
    other transforms of a seeded run unchanged, which keeps augmentation ablations comparable.
    """
    height, width = image.shape[:2]
    if center is None:
        center = (_random_center(height, size, rng), _random_center(width, size, rng))
    angle = np.deg2rad(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees))
    shear = rng.uniform(-cfg.shear, cfg.shear)
    # Log-uniform, so zooming in by s is as likely as zooming out by 1/s.
    scale = np.exp(rng.uniform(np.log(cfg.scale_min), np.log(cfg.scale_max)))
    flip_rows, flip_cols = (rng.random(2) < 0.5) & cfg.flip
    quarter_turns = int(rng.integers(4)) if cfg.rot90 else 0
    brightness = rng.uniform(-cfg.brightness, cfg.brightness)
    contrast = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)
    invert = rng.random() < cfg.invert
    gamma = np.exp(rng.uniform(-cfg.gamma, cfg.gamma))
    intensity = np.exp(rng.uniform(np.log(cfg.intensity_min), 0.0))
    stain = rng.normal(0.0, 1.0, (2, 3)) * cfg.hed_jitter  # per-stain scale and shift
    hue = rng.uniform(-cfg.hue, cfg.hue) * 360.0
    saturation = rng.uniform(1.0 - cfg.saturation, 1.0 + cfg.saturation)
    greyscale = rng.random() < cfg.greyscale
    blur = rng.uniform(0.0, cfg.blur_sigma)
    noise = rng.uniform(0.0, cfg.noise)
    noise_seed = int(rng.integers(2**31))

    matrix = _crop_to_source(size, center, angle, shear, scale)
    warp = dict(M=matrix, dsize=(size, size), borderMode=cv2.BORDER_REFLECT_101)
    img = cv2.warpAffine(image, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR, **warp)
    tgt = cv2.warpAffine(target, flags=cv2.WARP_INVERSE_MAP | cv2.INTER_NEAREST, **warp)
    if flip_rows:
        img, tgt = img[::-1], tgt[::-1]
    if flip_cols:
        img, tgt = img[:, ::-1], tgt[:, ::-1]
    img = np.ascontiguousarray(np.rot90(img, quarter_turns))
    tgt = np.ascontiguousarray(np.rot90(tgt, quarter_turns), dtype=np.float32)

    # Contrast around the crop mean, brightness, inversion, gamma, dimming and clipping act per grey
    # value, so they fold into one 256-entry table: with no augmentation it is exactly x / 255.
    mean = sum(cv2.mean(img)[:3]) / 3.0 / 255.0
    lut = np.arange(256) * (contrast / 255.0) + (mean * (1.0 - contrast) + brightness)
    if invert:
        lut = 1.0 - lut
    lut = np.clip(lut, 0.0, 1.0) ** gamma * intensity
    out = cv2.LUT(img, lut.astype(np.float32))
    out = recolour(out, stain, hue, saturation, greyscale)
    if blur > 0.05:
        out = cv2.GaussianBlur(out, (0, 0), blur, borderType=cv2.BORDER_REFLECT_101)
    if noise > 0:
        out = out + np.random.default_rng(noise_seed).normal(0.0, noise, out.shape).astype(np.float32)
    return np.clip(out, 0.0, 1.0, out=out), tgt


def recolour(rgb: np.ndarray, stain: np.ndarray, hue: float, saturation: float, greyscale: bool) -> np.ndarray:
    """Stain jitter in haematoxylin/eosin/DAB space (`stain`: per-stain scale and shift), then a
    hue shift in degrees, saturation scaling and optionally dropping colour, on float RGB in [0, 1]."""
    if stain.any():
        from skimage.color import hed2rgb, rgb2hed

        hed = rgb2hed(rgb)
        rgb = hed2rgb(hed * (1.0 + stain[0]) + stain[1] * 0.05).astype(np.float32)
    if hue or saturation != 1.0:
        hsv = cv2.cvtColor(np.clip(rgb, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        hsv[..., 1] = np.clip(hsv[..., 1] * saturation, 0.0, 1.0)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    if greyscale:
        grey = cv2.cvtColor(np.clip(rgb, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2GRAY)
        rgb = np.repeat(grey[..., None], 3, axis=2)
    return np.ascontiguousarray(rgb, np.float32)
