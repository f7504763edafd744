"""K ConvNets as one network: the engine's K independent inner trajectories in one batched
computation (``engine.trajectories = K``).

Every convolution is grouped (``groups = K``: block k of the output channels sees only block k
of the input channels), every norm is per channel (instance norm, batch norm), and the
classifier is K separate linear maps (one ``einsum``), so the K networks never mix: the
parameters of network k are block k of every parameter tensor, and the gradient of a sum of K
losses is, in block k, network k's own gradient. The input is trajectory-major, ``[K * B, C,
H, W]`` (rows ``k*B .. (k+1)*B`` are network k's batch), and so is the output ``[K * B,
classes]``.

Measured choice: grouped convolutions rather than ``torch.func.vmap`` over stacked parameters,
because the engine differentiates its steps with ``torch.autograd.grad`` (double backward,
vector-Jacobian products of a whole step), which ``vmap`` does not compose with; a grouped
convolution is one ordinary kernel launch for all K networks, on any device.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from harness.models.networks import ConvNet


class BatchedConvNet(nn.Module):
    """K ConvNets of the same shape in one module (see the module docstring)."""

    def __init__(self, template: ConvNet, trajectories: int):
        super().__init__()
        if not isinstance(template, ConvNet):
            raise ValueError(f"K trajectories: no batched form of {type(template).__name__} (only the ConvNet family)")
        self.K = trajectories
        layers: list[nn.Module] = []
        for layer in template.features:
            if isinstance(layer, nn.Conv2d):
                layers.append(nn.Conv2d(layer.in_channels * self.K, layer.out_channels * self.K, layer.kernel_size,
                                        layer.stride, layer.padding, groups=self.K, bias=layer.bias is not None))
            elif isinstance(layer, nn.GroupNorm):
                if layer.num_groups != layer.num_channels:
                    raise ValueError("K trajectories need a per-channel (instance) norm")
                layers.append(nn.GroupNorm(layer.num_groups * self.K, layer.num_channels * self.K,
                                           eps=layer.eps, affine=layer.affine))
            elif isinstance(layer, nn.BatchNorm2d):
                layers.append(nn.BatchNorm2d(layer.num_features * self.K, eps=layer.eps, momentum=layer.momentum))
            elif isinstance(layer, (nn.ReLU, nn.AvgPool2d, nn.MaxPool2d)):
                layers.append(layer)
            else:
                raise ValueError(f"K trajectories: no batched form of {type(layer).__name__}")
        self.features = nn.Sequential(*layers)
        out, inp = template.classifier.weight.shape
        self.classifier_weight = nn.Parameter(torch.empty(self.K, out, inp))
        self.classifier_bias = nn.Parameter(torch.empty(self.K, out))
        self.single_names = tuple(name for name, _ in template.named_parameters())
        self.load_blocks([template] * self.K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kb, c, h, w = x.shape
        b = kb // self.K
        x = x.view(self.K, b, c, h, w).transpose(0, 1).reshape(b, self.K * c, h, w)
        z = self.features(x).reshape(b, self.K, -1)
        logits = torch.einsum("bki,koi->bko", z, self.classifier_weight) + self.classifier_bias
        return logits.transpose(0, 1).reshape(kb, -1)

    @torch.no_grad()
    def load_block(self, k: int, network: ConvNet) -> None:
        """Block k of every parameter from ``network`` (a ConvNet of the template's shape)."""
        batched = [m for m in self.features if any(True for _ in m.parameters(recurse=False))]
        singles = [m for m in network.features if any(True for _ in m.parameters(recurse=False))]
        for fused, single in zip(batched, singles, strict=True):
            for name, p in single.named_parameters(recurse=False):
                rows = p.shape[0]
                getattr(fused, name)[k * rows:(k + 1) * rows].copy_(p)
        self.classifier_weight[k].copy_(network.classifier.weight)
        self.classifier_bias[k].copy_(network.classifier.bias)

    def load_blocks(self, networks: list[ConvNet]) -> None:
        for k, network in enumerate(networks):
            self.load_block(k, network)

    def block(self, params, k: int) -> tuple[torch.Tensor, ...]:
        """Network k's parameters out of the batched ``params`` (``named_parameters`` order), in the
        single ConvNet's order (views)."""
        own = {}
        for (name, _), p in zip(self.named_parameters(), params, strict=True):
            if name.startswith("classifier_"):
                own[name.replace("classifier_", "classifier.")] = p[k]
            else:
                rows = p.shape[0] // self.K
                own[name] = p[k * rows:(k + 1) * rows]
        return tuple(own[name] for name in self.single_names)
