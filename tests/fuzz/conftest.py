"""Loads the fuzz tests' hypothesis profile (see fuzzing.py)."""

from __future__ import annotations

import fuzzing  # noqa: F401 - registers and loads the profile before any test runs
