"""hrtem-ray: a Ray-distributed sweep engine for transfer-learning studies on simulated HRTEM images."""

__version__ = "0.1.0"
