"""GPU packing decisions from a measured peak (the calibration itself needs a GPU: see bench/ and BENCHMARKS.md)."""

from __future__ import annotations

import pytest

from rayclf.config import UserError
from rayclf.sweep.packing import Calibration, check_fraction, safe_fraction

GIB = 2**30


def test_fraction_that_fits_passes_and_one_that_does_not_names_a_safe_one():
    cal = Calibration(peak_bytes=int(9 * GIB), total_bytes=80 * GIB)
    check_fraction(0.25, cal, "arm 'x'")  # 20 GiB ≥ 9 GiB × 1.15 headroom
    with pytest.raises(UserError) as err:
        check_fraction(0.125, cal, "arm 'x'")  # 10 GiB < 10.35 GiB
    msg = str(err.value)
    assert "9.00 GiB" in msg and "resources.gpus: 0.142857" in msg


def test_safe_fraction():
    assert safe_fraction(Calibration(int(1 * GIB), 80 * GIB)) == pytest.approx(1 / 69)
    assert safe_fraction(Calibration(int(30 * GIB), 80 * GIB)) == 0.5
    assert safe_fraction(Calibration(int(79 * GIB), 80 * GIB)) == 1.0
