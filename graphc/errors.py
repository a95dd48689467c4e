"""The graphc error hierarchy: every error a user can cause is a GraphcError."""


class GraphcError(Exception):
    """Base class of every error graphc raises on behalf of the user."""


class ShapeError(GraphcError, ValueError):
    """Shapes that do not fit the op (message names op, shapes and source line)."""


class DTypeError(GraphcError, TypeError):
    """A dtype the op or the call does not accept."""


class CompileError(GraphcError):
    """The program cannot be compiled (bad graph, LLVM failure, missing symbol)."""


class InputError(GraphcError, ValueError):
    """A call or feed names, omits or shapes an argument wrongly."""


class ParseError(GraphcError, ValueError):
    """Malformed `.gir` text; the message gives the line, the column and a caret."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class VerifyError(CompileError):
    """An invalid graph or kernel partition (names the node and its source line)."""
