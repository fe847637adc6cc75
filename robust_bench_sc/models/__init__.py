"""Model architectures used by the bundled defenses."""

from robust_bench_sc.models.normalize import CIFAR100_MEAN, CIFAR100_STD, Normalize
from robust_bench_sc.models.resnet import CIFAR10_MEAN, CIFAR10_STD, ResNet32, load_resnet32

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "CIFAR100_MEAN", "CIFAR100_STD", "Normalize", "ResNet32", "load_resnet32"]
