"""h2fix: repairs HTTP/2 response trailers in Hypercorn 0.17.x and anycorn 0.18.x.

    import h2fix
    h2fix.apply()        # before the server starts serving

Importing h2fix imports neither libcst nor the server; both are imported
when they are needed.
"""

from __future__ import annotations

# Nothing is imported here: h2fix is imported at every worker's start, and each
# public name is imported on first use (__getattr__ below). What a warm apply()
# runs (about ten small modules) is imported when `h2fix.apply` is first looked
# up, so `import h2fix` alone, e.g. to name an error class or in a process that
# never patches, costs a fraction of a millisecond.

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._environment import Environment
    from ._errors import (
        ArgumentTypeError,
        CacheUnavailableError,
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

#: Public name -> the private module that defines it.
_LAZY = {
    "apply": "_runtime",
    "patch_h2_protocol": "_runtime",
    "patch_h2_protocol_minimal": "_runtime",
    "patched": "_runtime",
    "revert": "_runtime",
    "status": "_runtime",
    "H2FixError": "_errors",
    "Environment": "_environment",
    "ArgumentTypeError": "_errors",
    "CacheUnavailableError": "_errors",
    "DeadCodeChangedError": "_errors",
    "DependencyMissingError": "_errors",
    "FixFailedError": "_errors",
    "FunctionReplacedError": "_errors",
    "InvalidSourceError": "_errors",
    "ModuleReloadedError": "_errors",
    "NoFixSelectedError": "_errors",
    "NotAProtocolError": "_errors",
    "SourceChangedError": "_errors",
    "SourceUnavailableError": "_errors",
    "TargetNotFoundError": "_errors",
    "UnknownFixError": "_errors",
    "UnknownTargetError": "_errors",
    "UnreachablePatchError": "_errors",
    "UnrecognisedStructureError": "_errors",
    "FixOutcome": "_results",
    "Outcome": "_results",
    "Report": "_results",
    "Rewrite": "_results",
    "rewrite": "_rewrite",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "CacheUnavailableError",
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
