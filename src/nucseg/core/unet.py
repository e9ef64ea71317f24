"""U-Net for two-channel nucleus segmentation (foreground, border).

The border channel lets post-processing split touching nuclei with a seeded watershed. The
network is fully convolutional, so it runs on whole images of any size that is a multiple of
`required_multiple(depth, encoder)`; `nucseg.infer` pads to that multiple.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

ENCODERS = ("plain", "mobilenetv2")

# MobileNetV2 activations at strides 2, 4, 8, 16 (skips) and 32 (bottleneck). The expand ReLUs
# are the widest maps at each resolution; `block_16_project` avoids the 1280-channel `out_relu`.
MOBILENETV2_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
)
MOBILENETV2_BOTTLENECK = "block_16_project"
MOBILENETV2_STRIDE = 32


def required_multiple(depth: int, encoder: str = "plain") -> int:
    """Side lengths the model accepts must be multiples of this (every pooling halves them)."""
    if encoder == "plain":
        return 2**depth
    if encoder == "mobilenetv2":
        return MOBILENETV2_STRIDE
    raise ValueError(f"unknown encoder {encoder!r}, expected one of {ENCODERS}")


def build_unet(
    input_channels: int = 3,
    output_channels: int = 2,
    depth: int = 4,
    base_filters: int = 16,
    dropout: float = 0.1,
    batchnorm: bool = True,
    encoder: str = "plain",
    encoder_weights: str | Path | None = None,
    name: str = "unet",
) -> keras.Model:
    """Sigmoid U-Net; channel 0 is foreground probability, channel 1 nucleus border probability.

    `depth` only applies to the plain encoder; MobileNetV2 always downsamples 5 times.
    `encoder_weights` is a local MobileNetV2 backbone file (`.weights.h5` or `.keras`), never
    downloaded, so runs are reproducible offline; None or "" means random initialisation.
    """
    if encoder not in ENCODERS:
        raise ValueError(f"unknown encoder {encoder!r}, expected one of {ENCODERS}")
    if encoder == "plain" and depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    inputs = keras.Input(shape=(None, None, input_channels), name="image")
    if encoder == "plain":
        skips, x = _plain_encoder(inputs, depth, base_filters, dropout, batchnorm)
    else:
        skips, x = _mobilenetv2_encoder(inputs, encoder_weights)
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x) if dropout else x
        # Full-resolution features so the decoder can place borders to the pixel.
        skips = [_conv_block(inputs, base_filters, batchnorm, "input")] + skips

    for level in reversed(range(len(skips))):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _conv_block(x, filters, batchnorm, f"dec{level}")

    x = layers.Conv2D(output_channels, 1, name="logits")(x)
    # float32 even under a mixed-precision policy: BCE on float16 sigmoids saturates.
    outputs = layers.Activation("sigmoid", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def _conv_block(x: keras.KerasTensor, filters: int, batchnorm: bool, prefix: str) -> keras.KerasTensor:
    for i in (1, 2):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batchnorm,  # BatchNorm's beta makes the bias redundant
            kernel_initializer="he_normal",
            name=f"{prefix}_conv{i}",
        )(x)
        if batchnorm:
            x = layers.BatchNormalization(name=f"{prefix}_bn{i}")(x)
        x = layers.ReLU(name=f"{prefix}_relu{i}")(x)
    return x


def _plain_encoder(
    inputs: keras.KerasTensor, depth: int, base_filters: int, dropout: float, batchnorm: bool
) -> tuple[list[keras.KerasTensor], keras.KerasTensor]:
    """Returns the skip tensors (full resolution first) and the bottleneck."""
    skips = []
    x = inputs
    for level in range(depth):
        x = _conv_block(x, base_filters * 2**level, batchnorm, f"enc{level}")
        # Dropout only in the deeper half: shallow features are few and carry the fine detail.
        if dropout and 2 * level >= depth:
            x = layers.SpatialDropout2D(dropout, name=f"enc{level}_dropout")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _conv_block(x, base_filters * 2**depth, batchnorm, "bottleneck")
    if dropout:
        x = layers.SpatialDropout2D(dropout, name="bottleneck_dropout")(x)
    return skips, x


def _mobilenetv2_encoder(
    inputs: keras.KerasTensor, encoder_weights: str | Path | None
) -> tuple[list[keras.KerasTensor], keras.KerasTensor]:
    """MobileNetV2 trunk as one nested sub-model named "encoder" (strides 2..16 skips, bottleneck)."""
    backbone = keras.applications.MobileNetV2(
        include_top=False, weights=None, input_shape=(None, None, 3)
    )
    if encoder_weights:
        path = Path(encoder_weights)
        if not path.is_file():
            raise FileNotFoundError(f"MobileNetV2 encoder weights not found: {path}")
        # Load into the complete backbone so the file's layer set matches exactly.
        backbone.load_weights(path)
    names = MOBILENETV2_SKIPS + (MOBILENETV2_BOTTLENECK,)
    trunk = keras.Model(
        backbone.input, [backbone.get_layer(n).output for n in names], name="encoder"
    )
    x = inputs
    if inputs.shape[-1] != 3:
        x = layers.Conv2D(3, 1, name="to_rgb")(x)  # lets grey or multiplex images use the RGB stem
    x = layers.Rescaling(2.0, offset=-1.0, name="to_mobilenet_range")(x)  # [0, 1] -> [-1, 1]
    *skips, bottleneck = trunk(x)
    return list(skips), bottleneck
