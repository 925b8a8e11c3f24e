"""Classic CNNs (LeNet-5, AlexNet, Network in Network) registered in timm's model registry.

Importing this module registers ``lenet5``, ``alexnet`` and ``nin``, after which the usual timm
calls work for them::

    >>> import timm, pipeline.classic
    >>> model = timm.create_model("lenet5", num_classes=10, in_chans=1)
    >>> timm.data.resolve_model_data_config(model)["input_size"]
    (1, 32, 32)

Each network implements timm's classifier protocol (``get_classifier``, ``reset_classifier``,
``forward_features``, ``forward_head``, ``group_matcher``) and carries a pretrained cfg whose
``first_conv`` and ``classifier`` entries let timm adapt a local weights file to other input
channels and class counts (``pretrained_cfg_overlay=dict(file=...)``).

Architectures follow the papers, with the deviations noted in each class docstring.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (
    build_model_with_cfg,
    generate_default_cfgs,
    is_model,
    model_entrypoint,
    register_model,
)
from torch import nn

# A list, not a tuple: timm's register_model appends each entrypoint name to the module's __all__.
__all__ = [
    "ClassicNet",
    "LeNet5",
    "LeNetC3",
    "AlexNet",
    "NetworkInNetwork",
    "LENET_C3_TABLE",
    "ALEXNET_CONVS",
    "NIN_BLOCKS",
    "lenet5",
    "alexnet",
    "nin",
]

# LeCun et al. 1998, Table I: which of the six S2 maps feed each of the sixteen C3 maps.
# Breaking the symmetry this way is what brings LeNet-5 to the paper's 60k parameters.
LENET_C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (4, 5, 0), (5, 0, 1),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (3, 4, 5, 0), (4, 5, 0, 1), (5, 0, 1, 2),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)  # fmt: skip

# Krizhevsky et al. 2012: (out_channels, kernel, stride, padding, groups, max-pool after).
# groups=2 reproduces the two-GPU split of conv2/4/5, which is why the paper counts 60M parameters
# (torchvision's single-tower variant with narrower convs has 61.1M).
ALEXNET_CONVS: tuple[tuple[int, int, int, int, int, bool], ...] = (
    (96, 11, 4, 2, 1, True),
    (256, 5, 1, 2, 2, True),
    (384, 3, 1, 1, 1, False),
    (384, 3, 1, 1, 2, False),
    (256, 3, 1, 1, 2, True),
)

# Lin et al. 2013, CIFAR-10 model: per mlpconv block, (out_channels, kernel, padding) per conv.
# The last block's final 1x1 conv is the classifier (``NetworkInNetwork.fc``), so it is not listed.
NIN_BLOCKS: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((192, 5, 2), (160, 1, 0), (96, 1, 0)),
    ((192, 5, 2), (192, 1, 0), (192, 1, 0)),
    ((192, 3, 1), (192, 1, 0)),
)


class ClassicNet(nn.Module):
    """Shared timm classifier protocol for the classic networks.

    Subclasses build ``self.fc`` through :meth:`_make_classifier` and list their parameterised
    layers in forward order in ``layer_prefixes``; that order drives :meth:`group_matcher`, and so
    timm's layer-wise learning-rate decay.
    """

    layer_prefixes: ClassVar[tuple[str, ...]] = ()
    fc: nn.Module
    features: nn.Module
    global_pool: nn.Module
    pre_logits: nn.Module

    def __init__(self, num_classes: int, in_chans: int, num_features: int, head_hidden_size: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.num_features = num_features
        self.head_hidden_size = head_hidden_size

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the last feature maps ``[B, num_features, h, w]``."""
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the maps, run the fully connected ``pre_logits`` stack, then the classifier (unless ``pre_logits``)."""
        x = self.pre_logits(torch.flatten(self.global_pool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch ``[B, in_chans, H, W]``."""
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """Return the final classification layer."""
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one for ``num_classes`` (0 → identity).

        Args:
            num_classes: New number of classes.
            global_pool: Accepted for timm compatibility; these networks have a fixed pooling.
        """
        old = next(self.fc.parameters(), None)
        self.num_classes = num_classes
        self.fc = self._make_classifier(num_classes)
        if old is not None:
            self.fc.to(device=old.device, dtype=old.dtype)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], int]:
        """Map a parameter name to its layer index (input → output) for layer-wise lr decay."""
        prefixes = self.layer_prefixes

        def layer_of(name: str) -> int:
            for index, prefix in enumerate(prefixes):
                if name.startswith(prefix + "."):
                    return index
            return len(prefixes)  # anything unlisted belongs with the head

        return layer_of

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Gradient checkpointing is pointless for networks this small; only ``False`` is accepted."""
        if enable:
            raise NotImplementedError(f"{type(self).__name__} does not support gradient checkpointing")


class LeNetC3(nn.Module):
    """LeNet-5's partially connected C3 layer: each output map sees a subset of the input maps.

    Output maps with the same fan-in that sit next to each other in the table share one grouped
    convolution, so the layer costs three convolutions instead of sixteen.

    Args:
        table: For each output map, the indices of the input maps it reads.
        kernel_size: Square kernel size.
    """

    def __init__(self, table: Sequence[Sequence[int]] = LENET_C3_TABLE, kernel_size: int = 5) -> None:
        super().__init__()
        runs: list[list[Sequence[int]]] = []
        for inputs in table:
            if runs and len(runs[-1][0]) == len(inputs):
                runs[-1].append(inputs)
            else:
                runs.append([inputs])
        self.convs = nn.ModuleList()
        for i, run in enumerate(runs):
            fan_in = len(run[0])
            self.convs.append(nn.Conv2d(fan_in * len(run), len(run), kernel_size, groups=len(run)))
            # Not persistent: the table is architecture, not state, so checkpoints hold weights only.
            index = torch.tensor([c for inputs in run for c in inputs], dtype=torch.long)
            self.register_buffer(f"index{i}", index, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the sparse convolution to ``[B, 6, H, W]`` S2 maps."""
        outs = [conv(x[:, getattr(self, f"index{i}")]) for i, conv in enumerate(self.convs)]
        return torch.cat(outs, dim=1)


class LeNet5(ClassicNet):
    """LeNet-5 (LeCun et al. 1998): conv5(6) → pool → conv5(16) → pool → fc120 → fc84 → fc.

    With ``c3_table=True`` (default) C3 uses the paper's connection table, giving 60,806
    parameters at 32×32×1 and 10 classes (paper: 60,000; the difference is the paper's fixed RBF
    output layer versus our linear one and its trainable subsampling coefficients, which we drop).
    ``c3_table=False`` makes C3 dense (61,706 parameters).

    Other input sizes: an adaptive average pool resamples the C3/S4 maps to the 5×5 grid that
    C5 (``fc1``) expects, so the same weights serve 28×28 or 64×64 inputs. The smallest input is
    16×16; below that the second convolution has nothing to convolve.

    Args:
        num_classes: Output classes (0 → ``forward`` returns the 84-d F6 features).
        in_chans: Input channels.
        drop_rate: Dropout before the classifier (the paper has none).
        c3_table: Use the paper's sparse C3 connections.
        act_layer: Activation; the paper used a scaled tanh.
    """

    layer_prefixes = ("features.conv1", "features.conv2", "pre_logits.fc1", "pre_logits.fc2", "fc")

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        drop_rate: float = 0.0,
        c3_table: bool = True,
        act_layer: type[nn.Module] = nn.Tanh,
    ) -> None:
        super().__init__(num_classes, in_chans, num_features=16, head_hidden_size=84)
        conv2: nn.Module = LeNetC3() if c3_table else nn.Conv2d(6, 16, 5)
        self.features = nn.Sequential(OrderedDict(
            conv1=nn.Conv2d(in_chans, 6, 5), act1=act_layer(), pool1=nn.AvgPool2d(2),
            conv2=conv2, act2=act_layer(), pool2=nn.AvgPool2d(2),
        ))  # fmt: skip
        self.global_pool = nn.AdaptiveAvgPool2d(5)
        self.pre_logits = nn.Sequential(OrderedDict(
            fc1=nn.Linear(16 * 5 * 5, 120), act1=act_layer(), fc2=nn.Linear(120, 84), act2=act_layer(),
            drop=nn.Dropout(drop_rate),
        ))  # fmt: skip
        self.fc = self._make_classifier(num_classes)


class AlexNet(ClassicNet):
    """AlexNet (Krizhevsky et al. 2012): five convolutions and three fully connected layers.

    Widths and the two-tower grouping follow the paper (:data:`ALEXNET_CONVS`): 60,965,224
    parameters at 224×224×3 and 1000 classes (paper: "60 million"; torchvision's variant 61.1M).
    Pooling is the paper's overlapping 3×3/2 max-pool; an adaptive pool before ``fc6`` (as in
    torchvision) keeps inputs other than 224 working. The smallest input is 63×63.

    Args:
        num_classes: Output classes (0 → ``forward`` returns the 4096-d fc7 features).
        in_chans: Input channels.
        drop_rate: Dropout before fc6 and fc7, as in the paper.
        lrn: Local response normalisation after conv1 and conv2 (paper: k=2, n=5, α=1e-4, β=0.75).
    """

    layer_prefixes = (
        "features.conv1", "features.conv2", "features.conv3", "features.conv4", "features.conv5",
        "pre_logits.fc6", "pre_logits.fc7", "fc",
    )  # fmt: skip

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.5, lrn: bool = False
    ) -> None:
        super().__init__(num_classes, in_chans, num_features=ALEXNET_CONVS[-1][0], head_hidden_size=4096)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
        for i, (out, kernel, stride, padding, groups, pool) in enumerate(ALEXNET_CONVS, start=1):
            layers[f"conv{i}"] = nn.Conv2d(channels, out, kernel, stride, padding, groups=groups)
            layers[f"act{i}"] = nn.ReLU(inplace=True)
            if lrn and i <= 2:
                # torch divides alpha by the window size; the paper's formula does not.
                layers[f"lrn{i}"] = nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)
            if pool:
                layers[f"pool{i}"] = nn.MaxPool2d(3, 2)
            channels = out
        self.features = nn.Sequential(layers)
        self.global_pool = nn.AdaptiveAvgPool2d(6)
        self.pre_logits = nn.Sequential(OrderedDict(
            drop6=nn.Dropout(drop_rate), fc6=nn.Linear(channels * 6 * 6, 4096), act6=nn.ReLU(inplace=True),
            drop7=nn.Dropout(drop_rate), fc7=nn.Linear(4096, 4096), act7=nn.ReLU(inplace=True),
        ))  # fmt: skip
        self.fc = self._make_classifier(num_classes)


def _mlpconv(in_chans: int, spec: Sequence[tuple[int, int, int]]) -> nn.Sequential:
    """One mlpconv block: a k×k convolution followed by 1×1 convolutions, each with ReLU."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, (out, kernel, padding) in enumerate(spec, start=1):
        layers[f"conv{i}"] = nn.Conv2d(in_chans, out, kernel, padding=padding)
        layers[f"act{i}"] = nn.ReLU(inplace=True)
        in_chans = out
    return nn.Sequential(layers)


class NetworkInNetwork(ClassicNet):
    """Network in Network (Lin et al. 2013), the paper's CIFAR-10 model.

    Three mlpconv blocks with 3×3/2 max-pooling and dropout between them. The last block's final
    1×1 convolution is the classifier (``fc``): it produces one map per class and global average
    pooling turns the maps into logits, so there is no fully connected layer. Unlike the released
    Caffe model we apply no ReLU to the class maps, which would clamp logits at zero. Pooling uses
    ``ceil_mode`` as Caffe does (32 → 16 → 8). The smallest input is 4×4.

    Args:
        num_classes: Output classes (0 → ``forward`` returns pooled 192-d features).
        in_chans: Input channels.
        drop_rate: Dropout between mlpconv blocks (paper: 0.5).
    """

    layer_prefixes = ("features.block1", "features.block2", "features.block3", "fc")

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.5) -> None:
        width = NIN_BLOCKS[-1][-1][0]
        super().__init__(num_classes, in_chans, num_features=width, head_hidden_size=width)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_chans
        for i, spec in enumerate(NIN_BLOCKS, start=1):
            layers[f"block{i}"] = _mlpconv(channels, spec)
            channels = spec[-1][0]
            if i < len(NIN_BLOCKS):
                layers[f"pool{i}"] = nn.MaxPool2d(3, 2, ceil_mode=True)
                layers[f"drop{i}"] = nn.Dropout(drop_rate)
        self.features = nn.Sequential(layers)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = self._make_classifier(num_classes)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        return nn.Conv2d(self.num_features, num_classes, 1) if num_classes > 0 else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global-average-pool the class maps into logits (or the features if ``pre_logits``)."""
        if not pre_logits:
            x = self.fc(x)
        return torch.flatten(self.global_pool(x), 1)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Pretrained cfg shared by the classic networks; no weights are hosted for them."""
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "features.conv1", "classifier": "fc", "license": "bsd-3-clause",
        **kwargs,
    }  # fmt: skip


# timm's register_model reads this module-level name to attach each architecture's cfg.
default_cfgs = generate_default_cfgs({
    "lenet5": _cfg(
        num_classes=10, input_size=(1, 32, 32), crop_pct=1.0, mean=(0.5,), std=(0.5,),
        paper_name="Gradient-based learning applied to document recognition",
    ),
    "alexnet": _cfg(paper_name="ImageNet Classification with Deep Convolutional Neural Networks"),
    "nin": _cfg(
        num_classes=10, input_size=(3, 32, 32), crop_pct=1.0,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616),
        first_conv="features.block1.conv1", paper_name="Network In Network",
    ),
})  # fmt: skip


def _register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """``register_model`` that stays quiet when this module is reloaded.

    Re-registering our own entrypoint (``importlib.reload``) is expected, so timm's "Overwriting"
    warning is silenced for it; a clash with a model from another module still warns.
    """
    if is_model(fn.__name__) and model_entrypoint(fn.__name__).__module__ == fn.__module__:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"Overwriting {fn.__name__} in registry")
            return register_model(fn)
    return register_model(fn)


@_register
def lenet5(pretrained: bool = False, **kwargs: Any) -> LeNet5:
    """LeNet-5 for 32×32 grayscale digits (``c3_table``, ``act_layer``, ``drop_rate`` kwargs)."""
    return build_model_with_cfg(LeNet5, "lenet5", pretrained, **kwargs)


@_register
def alexnet(pretrained: bool = False, **kwargs: Any) -> AlexNet:
    """AlexNet with the paper's two-tower widths (``lrn``, ``drop_rate`` kwargs)."""
    return build_model_with_cfg(AlexNet, "alexnet", pretrained, **kwargs)


@_register
def nin(pretrained: bool = False, **kwargs: Any) -> NetworkInNetwork:
    """Network in Network, CIFAR-10 configuration (``drop_rate`` kwarg)."""
    return build_model_with_cfg(NetworkInNetwork, "nin", pretrained, **kwargs)
