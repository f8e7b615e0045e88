"""Facts about the running environment that decide which fixes are needed.

Kept apart from the rewrite so that the rewrite stays a pure function of
(source, fixes, environment), and so the facts can be part of a cache key.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass


@dataclass(frozen=True)
class Environment:
    #: Version of the installed h2 package, or None when h2 is not installed.
    h2_version: str | None = None

    @classmethod
    def detect(cls) -> Environment:
        try:
            h2_version = importlib.metadata.version("h2")
        except importlib.metadata.PackageNotFoundError:
            h2_version = None
        return cls(h2_version=h2_version)
