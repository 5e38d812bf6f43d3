"""The embedded digits demo: real data, a pretrained model and a quality metric that all work offline.

* :mod:`rootedgan.digits.data`: the 1,797 UCI handwritten digits that ship with scikit-learn, upsampled
  to 32x32 RGB and split into a source domain (digits 0-4) and a target domain (digits 5-9), stored as
  zips in ``assets/`` (regenerate with ``python -m rootedgan.digits.data``).
* :mod:`rootedgan.digits.classifier`: a small CNN digit classifier trained by our own code; its
  penultimate features define the *digits FID* (a domain FID, not Inception's).
* :mod:`rootedgan.digits.pretrain`: trains the small StyleGAN2 on the source domain that the demo
  finetunes (``assets/digits-source-G.safetensors``).
* :mod:`rootedgan.digits.quality`: ``DigitsQualityCallback``, the digits FID while training.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SOURCE_ZIP = ASSETS / "digits-source.zip"
TARGET_ZIP = ASSETS / "digits-target.zip"
CLASSIFIER = ASSETS / "digits-classifier.safetensors"
PRETRAINED = ASSETS / "digits-source-G.safetensors"

__all__ = ["ASSETS", "CLASSIFIER", "PRETRAINED", "SOURCE_ZIP", "TARGET_ZIP"]
