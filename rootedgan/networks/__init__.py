"""StyleGAN2 networks with NVIDIA stylegan2-ada-pytorch's constructor arguments, keys and calls."""

from rootedgan.networks.discriminator import Discriminator, DiscriminatorBlock, DiscriminatorEpilogue
from rootedgan.networks.generator import (
    Generator,
    MappingNetwork,
    SynthesisBlock,
    SynthesisLayer,
    SynthesisNetwork,
    ToRGBLayer,
)

__all__ = [
    "Discriminator",
    "DiscriminatorBlock",
    "DiscriminatorEpilogue",
    "Generator",
    "MappingNetwork",
    "SynthesisBlock",
    "SynthesisLayer",
    "SynthesisNetwork",
    "ToRGBLayer",
]
