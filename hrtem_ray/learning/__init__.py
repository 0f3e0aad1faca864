"""The U-Net in plain torch (``model``), standardisation and augmentation (``augment``), and the training loop and evaluation (``train``)."""
