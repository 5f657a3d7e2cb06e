"""The dose classifier: a Vision Transformer (transformers' ViT classes) over five channels.

From a local checkpoint directory when given: ImageNet-style 3-channel weights are adapted to
five channels (each new channel's patch filter is the mean of the RGB filters, scaled by 3/5,
so the first layer's response to a grey image is unchanged); a 5-channel checkpoint loads as
is. From random initialisation otherwise, with a small configuration that trains on CPUs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hpcray.errors import HpcrayError

NUM_CHANNELS = 5
SMALL: dict[str, Any] = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 128, "patch_size": 8}


class ModelError(HpcrayError):
    """A checkpoint directory that is not a ViT image classifier (names the directory)."""


def build_model(num_labels: int, image_size: int, dropout: float = 0.0,
                checkpoint: str | Path | None = None, architecture: dict[str, Any] | None = None,
                labels: list[str] | None = None):
    from transformers import ViTConfig, ViTForImageClassification

    names = labels or [str(i) for i in range(num_labels)]
    label_maps: dict[str, Any] = {"id2label": dict(enumerate(names)),
                                  "label2id": {n: i for i, n in enumerate(names)}}
    dropouts: dict[str, Any] = {"hidden_dropout_prob": dropout,
                                "attention_probs_dropout_prob": dropout}
    if checkpoint is None:
        # num_labels goes through PretrainedConfig's **kwargs, which the ViTConfig stubs omit
        config = ViTConfig(image_size=image_size, num_channels=NUM_CHANNELS,  # type: ignore[call-arg]
                           num_labels=num_labels, **{**SMALL, **(architecture or {})},
                           **dropouts, **label_maps)
        return ViTForImageClassification(config)
    path = Path(checkpoint)
    try:
        config = ViTConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: not a model checkpoint directory ({exc})") from None
    if config.model_type != "vit":
        raise ModelError(f"{path}: model type {config.model_type!r}; a ViT is needed")
    model = ViTForImageClassification.from_pretrained(
        path, num_labels=num_labels, ignore_mismatched_sizes=True, **dropouts, **label_maps)
    if model.config.num_channels != NUM_CHANNELS:
        adapt_channels(model, NUM_CHANNELS)
    return model


def adapt_channels(model, channels: int) -> None:
    """Replace the patch embedding's input channels, keeping what the pretrained filters see."""
    import torch

    embed = model.vit.embeddings.patch_embeddings
    old = embed.projection
    new = torch.nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride,
                          bias=old.bias is not None)
    with torch.no_grad():
        mean = old.weight.mean(dim=1, keepdim=True)
        new.weight.copy_(mean.repeat(1, channels, 1, 1) * (old.in_channels / channels))
        if old.bias is not None and new.bias is not None:  # new has a bias exactly when old has
            new.bias.copy_(old.bias)
    embed.projection = new
    embed.num_channels = channels
    model.config.num_channels = channels


def forward(model, x):
    """Logits; position embeddings are interpolated when the input size differs from the
    checkpoint's (fine-tuning at another resolution)."""
    size = model.config.image_size
    return model(pixel_values=x, interpolate_pos_encoding=x.shape[-1] != size).logits
