"""The fixes, one module each; their table is `h2fix._registry` (re-exported here)."""

from .._registry import FIXES, Fix, select

__all__ = ["FIXES", "Fix", "select"]
