"""What h2fix agrees to hand to LibCST: Python that parses, no bigger or deeper than
a protocol module plausibly is.

LibCST's native parser can crash the whole process on deeply nested code, and its
tree walks raise RecursionError (or take minutes) on long expression chains long
before Python's own parser objects. Python 3.9's own parser crashes too, on chains
of ~150,000 terms. So the checks run in this order, each one making the next safe:
size, then a token scan (flat, in Python), then `compile(..., PyCF_ONLY_AST)`, then
an iterative walk that measures nesting the way LibCST nests nodes.

Measured with libcst 1.9 on Python 3.9, 3.11 and 3.13 (the default recursion limit,
called from a shallow stack): h2fix.rewrite() handles 130 nested lists or calls, and
300 terms of `a + b`, `a and b` or adjacent string literals; it fails with
RecursionError at 140 nested lists, 400 such terms, and crashes (SIGSEGV) at 2,000
nested brackets. Hypercorn's and anycorn's protocol/h2.py (every release 0.16-0.20)
are 15-19 kB, nest 19 levels deep and have at most 79 tokens in a statement.
"""

from __future__ import annotations

import ast
import io
import tokenize

from ._errors import InvalidSourceError
from ._targets import MAX_CHARACTERS, check_size

#: About 12 times the longest statement of a real protocol module; also bounds the
#: length of any expression chain before Python's own parser sees it.
MAX_STATEMENT_TOKENS = 1_000
#: About 3 times a real protocol module, and under half of what LibCST survives.
MAX_DEPTH = 60

__all__ = ["MAX_CHARACTERS", "MAX_DEPTH", "MAX_STATEMENT_TOKENS", "check_size", "check_source"]


def check_source(source: str) -> None:
    """Raise InvalidSourceError unless `source` is safe and sensible to rewrite."""
    check_size(len(source), "characters")
    if "\x00" in source:  # what compile() refuses; some tokenizers fail on it oddly
        line = source.count("\n", 0, source.index("\x00")) + 1
        raise InvalidSourceError("Python source that compiles", f"a NUL byte at line {line}")
    string_runs = _scan_tokens(source)
    _check_depth(_parse(source), string_runs)
    _compile(source)


def _compile(source: str) -> None:
    """The whole compiler, not just the parser: `break` outside a loop, too many nested
    parentheses and the like are found only here (safe now: size and depth are bounded)."""
    try:
        compile(source, "<source>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        found = f"{type(error).__name__}: {error}"
        raise InvalidSourceError("Python source that compiles", found) from error


def _scan_tokens(source: str) -> dict[tuple[int, int], int]:
    """Check statement lengths; return where runs of adjacent string literals start and
    how long they are (LibCST nests them pairwise, Python's AST does not show them)."""
    ignored = {tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    fstring_start = getattr(tokenize, "FSTRING_START", None)  # Python 3.12+
    fstring_end = getattr(tokenize, "FSTRING_END", None)
    runs: dict[tuple[int, int], int] = {}
    run_start: tuple[int, int] | None = None
    after_literal = False
    fstring_depth = 0
    count = 0
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NEWLINE:
                count = 0
            elif token.type not in ignored:
                count += 1
                if count > MAX_STATEMENT_TOKENS:
                    raise InvalidSourceError(
                        f"statements of at most {MAX_STATEMENT_TOKENS:,} tokens "
                        "(the longest in Hypercorn's protocol module has under 80)",
                        f"a longer one at line {token.start[0]}",
                    )
            if token.type in ignored:
                continue
            if fstring_depth:  # inside an f-string: its parts are not literals of the run
                fstring_depth += token.type == fstring_start
                fstring_depth -= token.type == fstring_end
                after_literal = fstring_depth == 0
                continue
            starts_literal = token.type in (tokenize.STRING, fstring_start)
            if starts_literal and after_literal and run_start is not None:
                runs[run_start] = runs.get(run_start, 1) + 1
            elif starts_literal:
                run_start = token.start
            if token.type == fstring_start:
                fstring_depth = 1
            after_literal = token.type == tokenize.STRING
    except (SyntaxError, SystemError) as error:
        # 3.12+ tokenizes with the parser's own tokenizer; 3.13.0's raises SystemError
        # on a NUL byte in a comment.
        raise _unparsable(error) from error
    except tokenize.TokenError as error:
        # Only raised at the end of the text, so every statement has been counted and
        # the parser may look: its message is the one people know.
        _parse(source)
        raise _unparsable(error) from error
    return runs


def _parse(source: str) -> ast.Module:
    try:
        tree = compile(source, "<source>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as error:
        raise _unparsable(error) from error
    assert isinstance(tree, ast.Module)
    return tree


def _unparsable(error: BaseException) -> InvalidSourceError:
    detail = str(error) or "nesting too deep for Python's parser"
    line = getattr(error, "lineno", None)
    where = f" at line {line}" if line and f"line {line}" not in detail else ""
    return InvalidSourceError(
        "Python source that parses", f"{type(error).__name__}: {detail}{where}"
    )


def _check_depth(tree: ast.Module, string_runs: dict[tuple[int, int], int]) -> None:
    """Walk without recursion: the tree may be as deep as the parser allowed."""
    stack: list[tuple[ast.AST, int, int]] = [(tree, 1, 1)]
    while stack:
        node, depth, line = stack.pop()
        line = getattr(node, "lineno", line)
        # LibCST nests `a and b and c` and adjacent literals pairwise, one level a term.
        if isinstance(node, ast.BoolOp):
            depth += len(node.values) - 2
        elif isinstance(node, (ast.Constant, ast.JoinedStr)):
            depth += string_runs.get((node.lineno, node.col_offset), 1) - 1
        if depth > MAX_DEPTH:
            raise InvalidSourceError(
                f"code nested at most {MAX_DEPTH} levels deep (Hypercorn's protocol "
                "module: 19; each term of a chain like `a + b + c` counts as a level)",
                f"deeper nesting at line {line}",
            )
        stack.extend((child, depth + 1, line) for child in ast.iter_child_nodes(node))
