"""The detector of a simulation: MTF and noise floor (SimulationParams.detector_*)."""

from __future__ import annotations

import numpy as np
import pytest

from hrtem_ray.physics.simulate import apply_detector, detector_mtf
from hrtem_ray.spec.types import SimulationParams


def test_mtf_keeps_the_mean_and_damps_high_frequencies(tiny_dataset):
    images, _ = tiny_dataset["0"]
    image = images[0].astype(np.float64)
    recorded = apply_detector(image, 0.3, 0.0, np.random.default_rng(0))
    assert recorded.mean() == pytest.approx(image.mean(), rel=1e-6)
    power = np.abs(np.fft.fft2(image)) ** 2
    after = np.abs(np.fft.fft2(recorded)) ** 2
    nyquist = np.abs(np.fft.fftfreq(image.shape[0])) > 0.4
    ratio = after[nyquist][:, nyquist].sum() / power[nyquist][:, nyquist].sum()
    assert ratio < 0.3**2  # both axes near Nyquist: at most MTF(1/2)^2 of the power
    assert np.array_equal(apply_detector(image, 1.0, 0.0, np.random.default_rng(0)),
                          image.astype(np.float32))  # fmt: skip
    assert detector_mtf((8, 8), 0.5)[0, 4] == pytest.approx(0.5)


def test_noise_floor_adds_its_variance(tiny_dataset):
    images, _ = tiny_dataset["0"]
    image = images[0].astype(np.float64)
    recorded = apply_detector(image, 1.0, 5.0, np.random.default_rng(1))
    assert np.var(recorded - image) == pytest.approx(25.0, rel=0.1)  # 4096 pixels


def test_an_ideal_detector_leaves_every_stored_spec_and_hash_as_it_was():
    assert "detector_mtf_at_nyquist" not in SimulationParams().model_dump(mode="json")
    real = SimulationParams(detector_mtf_at_nyquist=0.3, detector_noise_e_per_pixel=2)
    dumped = real.model_dump(mode="json")
    assert dumped["detector_mtf_at_nyquist"] == 0.3 and dumped["detector_noise_e_per_pixel"] == 2
    with pytest.raises(ValueError, match="detector_mtf_at_nyquist"):
        SimulationParams(detector_mtf_at_nyquist=0)
