"""Server-test fixtures: the test kit on sys.path, and a tiny in-process daemon factory."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))  # fedserver_testkit (importlib import mode)
