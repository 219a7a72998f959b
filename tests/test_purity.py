"""sisa and approx are pure libraries: importing them loads neither ray nor mlflow."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("package", ["sisa", "approx"])
def test_library_import_loads_neither_ray_nor_mlflow(package):
    code = f"import sys, {package}; print(sorted(m for m in ('ray', 'mlflow', 'sisa', 'approx') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(loaded) == [package]
