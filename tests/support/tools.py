"""Command-line clients the suite drives (curl, nghttp, h2load): system packages, not pip's.

On a machine without one, its tests skip and say which package brings it, so that the Quick
start's `pip install -e ".[test]" && pytest` works on a machine with only Python. CI sets
H2FIX_REQUIRE_TOOLS=1 after installing them: there a missing tool fails the run, so a green
CI never hides a skipped client.
"""

from __future__ import annotations

import os
import shutil

import pytest


def tool(name: str, package: str) -> str:
    """The path of the command `name`, from the Debian package `package`."""
    path = shutil.which(name)
    if path is not None:
        return path
    message = f"{name} is not installed (apt-get install {package}; .ci/run installs it)"
    if os.environ.get("H2FIX_REQUIRE_TOOLS") == "1":
        pytest.fail(message)
    pytest.skip(message)
