"""The embedded digits demo: real data, a pretrained model and a quality metric that all work offline.

:mod:`~rootedgan.digits.data` builds the source (digits 0-4) and target (5-9) zips in ``assets/`` from
scikit-learn's UCI digits; :mod:`~rootedgan.digits.classifier` is the small CNN whose features define the
*digits FID*; :mod:`~rootedgan.digits.pretrain` trains the small StyleGAN2 the demo finetunes;
:mod:`~rootedgan.digits.quality` holds ``DigitsQualityCallback``, the digits FID while training.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SOURCE_ZIP = ASSETS / "digits-source.zip"
TARGET_ZIP = ASSETS / "digits-target.zip"
CLASSIFIER = ASSETS / "digits-classifier.safetensors"
PRETRAINED = ASSETS / "digits-source-G.safetensors"

__all__ = ["ASSETS", "CLASSIFIER", "PRETRAINED", "SOURCE_ZIP", "TARGET_ZIP"]
