"""``python -m llamatelemetry``: the command line."""

from __future__ import annotations

import sys

from llamatelemetry.cli import main

sys.exit(main())
