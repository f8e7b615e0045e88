"""h2fix: repairs HTTP/2 response trailers in Hypercorn 0.17.x and anycorn 0.18.x.

    import h2fix
    h2fix.apply()        # before the server starts serving

Importing h2fix imports neither libcst nor the server; both are imported
when they are needed.
"""

from __future__ import annotations

from ._environment import Environment
from ._errors import (
    ArgumentTypeError,
    DeadCodeChangedError,
    DependencyMissingError,
    FixFailedError,
    FunctionReplacedError,
    H2FixError,
    InvalidSourceError,
    ModuleReloadedError,
    NoFixSelectedError,
    NotAProtocolError,
    SourceChangedError,
    SourceUnavailableError,
    TargetNotFoundError,
    UnknownFixError,
    UnknownTargetError,
    UnreachablePatchError,
    UnrecognisedStructureError,
)
from ._results import FixOutcome, Outcome, Report, Rewrite
from ._rewrite import rewrite
from ._runtime import (
    apply,
    patch_h2_protocol,
    patch_h2_protocol_minimal,
    patched,
    revert,
    status,
)

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "DeadCodeChangedError",
    "DependencyMissingError",
    "Environment",
    "FixFailedError",
    "FixOutcome",
    "FunctionReplacedError",
    "H2FixError",
    "InvalidSourceError",
    "ModuleReloadedError",
    "NoFixSelectedError",
    "NotAProtocolError",
    "Outcome",
    "Report",
    "Rewrite",
    "SourceChangedError",
    "SourceUnavailableError",
    "TargetNotFoundError",
    "UnknownFixError",
    "UnknownTargetError",
    "UnreachablePatchError",
    "UnrecognisedStructureError",
    "__version__",
    "apply",
    "patch_h2_protocol",
    "patch_h2_protocol_minimal",
    "patched",
    "revert",
    "rewrite",
    "status",
]
