#!/usr/bin/env python3
"""Write a patched copy of an installed Hypercorn (or anycorn) package to a directory.

    python scripts/vendor.py --target hypercorn --out vendored/

The same command as `h2fix vendor` (h2fix/_vendor.py); kept because the
project layout promises this script. Exit codes: 0 written and verified,
2 refused or failed.
"""

from __future__ import annotations

from h2fix._vendor import main

if __name__ == "__main__":
    raise SystemExit(main(prog="vendor.py"))
