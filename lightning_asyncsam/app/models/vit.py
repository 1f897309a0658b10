"""Vision Transformers from torchvision, optionally starting from pretrained weights on disk.

The ViT recipe fine-tunes ImageNet-pretrained ViT-B/16 (Dosovitskiy et al. 2021) on CIFAR-100.
Machines here cannot download, so the weights come from a local file: a ``state_dict`` saved
with ``torch.save``, such as torchvision's ``vit_b_16-c867db91.pth`` (IMAGENET1K_V1). Every
tensor but the classification head is loaded; the head is new (``num_classes`` outputs, zero
initialised, as torchvision and the ViT paper do for fine-tuning).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.models import VisionTransformer

#: Where torchvision publishes the ImageNet-1k ViT-B/16 weights the recipe expects.
VIT_B16_URL = "https://download.pytorch.org/models/vit_b_16-c867db91.pth"


def vision_transformer(
    num_classes: int = 100,
    image_size: int = 224,
    patch_size: int = 16,
    num_layers: int = 12,
    num_heads: int = 12,
    hidden_dim: int = 768,
    mlp_dim: int = 3072,
    dropout: float = 0.0,
    attention_dropout: float = 0.0,
    weights: str | Path | None = None,
) -> VisionTransformer:
    """Build a ViT (defaults: ViT-B/16 at 224x224) and load pretrained weights if given.

    Args:
        num_classes: Number of output logits (the new head's size).
        image_size: Input side in pixels; must match the weights' (224 for ViT-B/16).
        patch_size: Patch side in pixels.
        num_layers: Transformer blocks.
        num_heads: Attention heads per block.
        hidden_dim: Token width.
        mlp_dim: Width of each block's MLP.
        dropout: Dropout after attention and in the MLP.
        attention_dropout: Dropout on the attention weights.
        weights: Path of a pretrained ``state_dict`` (.pth); ``None`` trains from scratch.

    Returns:
        The network, with the pretrained backbone loaded when ``weights`` is given.

    Raises:
        FileNotFoundError: ``weights`` names a file that does not exist.
        ValueError: the file is not a state_dict of this architecture.

    Example::

        net = vision_transformer(num_classes=100, weights="/models/vit_b_16-c867db91.pth")
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}.")
    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size}).")
    net = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size,
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        attention_dropout=attention_dropout,
        num_classes=num_classes,
    )
    if weights is not None:
        load_backbone(net, Path(weights))
    return net


def load_backbone(net: VisionTransformer, path: Path) -> None:
    """Load every tensor of the state_dict at ``path`` into ``net`` except the head ``heads.*``.

    Args:
        net: The freshly built ViT.
        path: A ``torch.save``-d state_dict.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a state_dict, or its tensors do not fit ``net``.
    """
    path = path.expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained ViT weights not found at '{path}'. The ViT recipe fine-tunes ImageNet "
            f"weights: download {VIT_B16_URL} (torchvision's ViT_B_16_Weights.IMAGENET1K_V1) on "
            "a machine with internet, copy it here or pass model.weights=PATH; or pass "
            "model.weights=null to train from scratch."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"'{path}' does not hold a state_dict (a dict of tensors); got {type(state).__name__}.")
    backbone = {k: v for k, v in state.items() if not k.startswith("heads.")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith("heads.")}
    missing = sorted(expected.keys() - backbone.keys())
    unexpected = sorted(backbone.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & backbone.keys() if backbone[k].shape != expected[k])
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{label}: {keys[:3]}{' ...' if len(keys) > 3 else ''}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise ValueError(
            f"the weights in '{path}' do not fit this ViT ({details}). Check model.image_size, "
            "patch_size, num_layers, hidden_dim and mlp_dim against the checkpoint (ViT-B/16: 224, "
            "16, 12, 768, 3072)."
        )
    net.load_state_dict(backbone, strict=False)
