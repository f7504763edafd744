"""Networks and augmentation: the ConvNet family and ResNet-18 (:mod:`.networks`), and the
differentiable augmentation drawn ahead of time (:mod:`.augment`).

May import: :mod:`harness.core`. Nothing above it.
"""

from harness.models.augment import AugmentConfig, apply_affine, augment, sample_affine
from harness.models.networks import ConvNet, ModelConfig, create_model, module_device, reinitialize, resnet18

__all__ = ["AugmentConfig", "apply_affine", "augment", "sample_affine",
           "ConvNet", "ModelConfig", "create_model", "module_device", "reinitialize", "resnet18"]
