"""Scope tracking shared by the fixes: which class and function a node is in."""

from __future__ import annotations

from typing import Union

import libcst as cst

Scope = Union[cst.ClassDef, cst.FunctionDef]


class ScopeTracker(cst.CSTTransformer):
    """A transformer that knows, at every node, its enclosing classes and functions."""

    def __init__(self) -> None:
        super().__init__()
        self.scopes: list[Scope] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.scopes.append(node)

    def leave_ClassDef(
        self, original_node: cst.ClassDef, updated_node: cst.ClassDef
    ) -> cst.ClassDef:
        self.scopes.pop()
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        self.scopes.append(node)

    def leave_FunctionDef(
        self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef
    ) -> cst.FunctionDef:
        self.scopes.pop()
        return updated_node

    @property
    def where(self) -> str:
        """The qualified name of the innermost function or class, e.g. H2Protocol.initiate."""
        return ".".join(scope.name.value for scope in self.scopes) or "<module>"

    @property
    def function(self) -> cst.FunctionDef | None:
        return next((s for s in reversed(self.scopes) if isinstance(s, cst.FunctionDef)), None)

    @property
    def cls(self) -> cst.ClassDef | None:
        return next((s for s in reversed(self.scopes) if isinstance(s, cst.ClassDef)), None)


def self_name(function: cst.FunctionDef) -> str | None:
    """The name of a method's first parameter (`self`), if it has one."""
    params = function.params.posonly_params or function.params.params
    return params[0].name.value if params else None
