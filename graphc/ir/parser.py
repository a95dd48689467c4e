"""The parser of the text form (`.gir`, ir/printer.py describes it): text -> graph.

The parser rebuilds every node with `apply`, so types are re-inferred and checked against
the printed ones. The text carries shapes, not weights: parsed params get zero-filled
storage of their declared type. A nested `graph` block is a loop body (ir/scan.py), read in
a scope of its own and named by the scan nodes after it. Header declarations carry no
source location.
"""

from __future__ import annotations

import dataclasses
import json
import re

import numpy as np

from graphc.errors import GraphcError, ParseError, VerifyError
from graphc.ir import scan  # noqa: F401 -- registers the loop op `scan` read in bodies
from graphc.ir.graph import FORMS, Graph, Kernel, Node, Storage, location
from graphc.ir.ops import OPS, apply
from graphc.ir.printer import DECLARED, PLAIN_NAME, WORDS, quote
from graphc.ir.types import LONG, SHORT, TensorType
from graphc.ir.verify import update_problem, verify

# ---- parsing --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\n]+)
  | (?P<comment>\#[^\n]*)
  | (?P<name>%(?:"(?:[^"\\\n]|\\.)*"|[A-Za-z0-9_.]+))
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>-?[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct><-|->|[()\[\]{},:=])
    """,
    re.VERBOSE,
)


@dataclasses.dataclass
class Token:
    kind: str
    text: str
    line: int
    column: int


class Parser:
    """Recursive descent over a token list; every error becomes a ParseError with a caret."""

    def __init__(self, text: str, filename: str):
        self.lines = text.split("\n")
        self.filename = filename
        self.tokens: list[Token] = []
        self.comments: dict[int, str] = {}  # line -> trailing `# location` after code
        self._tokenize(text)
        self.pos = 0
        self.env: dict[str, Node] = {}
        self.defined_at: dict[str, int] = {}
        self.defined_in: dict[str, int | None] = {}  # the kernel block of each equation
        self.block: int | None = None  # the kernel block being read (None: top level)
        self.blocks = 0  # kernel blocks begun
        self.updated_at: dict[Node, int] = {}  # param -> line of its update
        self.bodies: dict[str, Graph] = {}  # loop bodies (nested graph blocks) by label

    def _tokenize(self, text: str):
        line, line_start, pos = 1, 0, 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                self.fail(
                    f"unexpected character {text[pos]!r}", Token("", "", line, pos - line_start + 1)
                )
            kind, value = match.lastgroup, match.group()
            if kind == "comment":
                if self.tokens and self.tokens[-1].line == line:
                    self.comments[line] = value[1:].strip()
            elif kind != "space":
                self.tokens.append(Token(kind, value, line, pos - line_start + 1))
            newlines = value.count("\n")
            if newlines:
                line += newlines
                line_start = pos + value.rindex("\n") + 1
            pos = match.end()
        self.tokens.append(Token("end", "end of input", line, pos - line_start + 1))

    # -- token helpers --
    def fail(self, message: str, token: Token | None = None):
        token = token or self.peek()
        source = self.lines[token.line - 1] if token.line <= len(self.lines) else ""
        caret = " " * (token.column - 1) + "^"
        raise ParseError(
            f"{self.filename}:{token.line}:{token.column}: {message}\n  {source}\n  {caret}",
            line=token.line,
        )

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        token = self.tokens[self.pos]
        self.pos = min(self.pos + 1, len(self.tokens) - 1)
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token.kind in ("punct", "word") and token.text == text

    def expect(self, text: str, what: str = "") -> Token:
        if not self.at(text):
            found = self.peek().text
            self.fail(f"expected {text!r}{' ' + what if what else ''}, found {found!r}")
        return self.next()

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.peek().kind != kind:
            self.fail(f"expected {what}, found {self.peek().text!r}")
        return self.next()

    def comma_list(self, item, close: str) -> list:
        items = []
        while not self.at(close):
            items.append(item())
            if not self.at(close):
                self.expect(",", f"or {close!r}")
        self.next()
        return items

    # -- pieces --
    def label(self) -> tuple[str, str | None]:
        """A `%name` token -> (key, node name); `%N` unquoted digits are unnamed nodes."""
        token = self.expect_kind("name", "a %value")
        body = token.text[1:]
        if body.startswith('"'):
            name = self.unquote(body, token)
        elif body.isdigit():
            return token.text, None
        elif PLAIN_NAME.match(body):
            name = body
        else:
            self.fail(f'bad value name {token.text!r} (quote it: %"...")', token)
        return "%" + quote(name), name

    def unquote(self, text: str, token: Token) -> str:
        """The string a `"..."` literal (JSON escapes) stands for."""
        try:
            return json.loads(text)
        except ValueError as error:  # a control character or a bad escape
            self.fail(f"bad string {text}: {error.msg}", token)

    def use(self) -> Node:
        token = self.peek()
        key, _ = self.label()
        if key not in self.env:
            self.fail(f"undefined value {token.text}", token)
        return self.env[key]

    def uses(self) -> list[Node]:
        """One or more comma-separated `%value` operands."""
        nodes = [self.use()]
        while self.at(","):
            self.next()
            nodes.append(self.use())
        return nodes

    def define(self, token: Token, key: str, node: Node):
        if key in self.env:
            self.fail(
                f"duplicate definition of {token.text} (first on line {self.defined_at[key]})",
                token,
            )
        self.env[key], self.defined_at[key] = node, token.line

    def word_or_string(self, what: str) -> str:
        token = self.next()
        if token.kind == "word":
            return token.text
        if token.kind == "string":
            return self.unquote(token.text, token)
        self.fail(f"expected {what}, found {token.text!r}", token)

    def tensor_type(self) -> TensorType:
        token = self.expect_kind("word", "a type like f32[3,4]")
        if token.text not in LONG and token.text not in SHORT:
            self.fail(f"unknown dtype {token.text!r}; expected one of {', '.join(LONG)}", token)
        self.expect("[")
        dims = self.comma_list(lambda: self.expect_kind("number", "a dimension"), "]")
        for dim in dims:
            if not dim.text.isdigit():
                self.fail(f"dimension must be a non-negative integer, got {dim.text}", dim)
        return TensorType(tuple(int(d.text) for d in dims), LONG.get(token.text, token.text))

    def value(self):
        """A Python-literal value: number, bool, bare word, string, (tuple) or [list]."""
        token = self.next()
        if token.kind == "number":
            is_int = not any(c in token.text for c in ".eE")
            return int(token.text) if is_int else float(token.text)
        if token.kind == "word":
            return WORDS.get(token.text, token.text)
        if token.kind == "string":
            return self.unquote(token.text, token)
        if token.text == "(":
            return tuple(self.comma_list(self.value, ")"))
        if token.text == "[":
            return self.comma_list(self.value, "]")
        self.fail(f"expected a value, found {token.text!r}", token)

    def const_value(self, node_type: TensorType, token: Token) -> np.ndarray:
        raw = self.value()
        try:
            loose = np.array(raw)
            if loose.dtype.kind not in "biuf" and loose.size:
                raise TypeError(f"non-numeric elements ({loose.dtype})")
            if loose.size and not np.can_cast(loose.dtype, node_type.np_dtype, "same_kind"):
                raise TypeError(f"{loose.dtype} elements in a {node_type.dtype} const")
            array = np.array(raw, dtype=node_type.np_dtype)
            if array.shape != node_type.shape and array.size == node_type.size == 0:
                array = array.reshape(node_type.shape)
        except (ValueError, TypeError, OverflowError) as error:
            self.fail(f"bad const value: {error}", token)
        if array.shape != node_type.shape:
            self.fail(f"const value has shape {array.shape} but the type is {node_type}", token)
        array.setflags(write=False)
        return array

    def declarations(self, op: str) -> list[Node]:
        def declaration():
            token = self.peek()
            key, name = self.label()
            self.expect(":")
            node_type = self.tensor_type()
            attrs = {"shape": node_type.shape, "dtype": node_type.dtype}
            if op == "param":
                attrs["storage"] = Storage(np.zeros(node_type.shape, node_type.np_dtype))
            node = Node(op, (), attrs, node_type, name, None)
            self.define(token, key, node)
            return node

        self.expect("(")
        return self.comma_list(declaration, ")")

    def equation(self) -> Node:
        token = self.peek()
        key, name = self.label()
        self.expect(":")
        node_type = self.tensor_type()
        self.expect("=")
        op_token = self.expect_kind("word", "an op name")
        op = op_token.text
        if op not in OPS:
            self.fail(f"unknown op {op!r}", op_token)
        if op in DECLARED:
            self.fail(f"{op} values are declared in the graph header, not as equations", op_token)
        attrs, inputs = {}, []
        if op == "const":
            attrs["value"] = self.const_value(node_type, self.peek())
        if OPS[op].arity != 0:
            inputs = self.uses()
        if self.at("{"):
            self.next()
            for item in self.comma_list(self.attribute, "}"):
                attrs.update([item])
        if "body" in attrs:  # a loop's body: a nested graph block read before
            if attrs["body"] not in self.bodies:
                self.fail(f"undefined body {attrs['body']!r}", op_token)
            attrs["body"] = self.bodies[attrs["body"]]
        loc = self.comments.get(token.line)
        try:
            with location(loc or f"{self.filename}:{token.line}"):
                node = apply(op, *inputs, name=name, **attrs)
        except GraphcError as error:
            self.fail(str(error), op_token)
        except Exception as error:  # noqa: BLE001 -- a missing or ill-typed attribute
            self.fail(
                f"{op}: bad or missing attributes ({type(error).__name__}: {error})", op_token
            )
        if node.type != node_type:
            self.fail(f"{token.text} is declared {node_type} but {op} gives {node.type}", token)
        node = dataclasses.replace(node, loc=loc)
        earlier = self.env.get(key)
        if earlier is not None and self.recomputed(key, earlier, node):
            return earlier  # one value computed again in this kernel: the same node
        self.define(token, key, node)
        self.defined_in[key] = self.block
        return node

    def recomputed(self, key: str, earlier: Node, node: Node) -> bool:
        """Whether `node` repeats, inside another kernel block, the equation that defined
        `earlier` inside a kernel (fusion recomputes a cheap value in each kernel using it)."""
        block = self.defined_in.get(key)
        if self.block is None or block is None or block == self.block:
            return False
        same_attrs = earlier.attrs.keys() == node.attrs.keys() and all(
            np.array_equal(earlier.attrs[k], node.attrs[k], equal_nan=True)
            if isinstance(node.attrs[k], np.ndarray)
            else earlier.attrs[k] == node.attrs[k]
            for k in node.attrs
        )
        return (
            earlier.op == node.op
            and earlier.type == node.type
            and len(earlier.inputs) == len(node.inputs)
            and all(a is b for a, b in zip(earlier.inputs, node.inputs))
            and same_attrs
        )

    def attribute(self) -> tuple[str, object]:
        key = self.expect_kind("word", "an attribute name").text
        self.expect("=")
        value = self.value()
        return key, tuple(value) if isinstance(value, list) else value

    def kernel(self) -> Kernel:
        self.expect("kernel")
        name = self.word_or_string("a kernel name")
        self.expect("(")
        form_token = self.expect_kind("word", "a kernel form")
        if form_token.text not in FORMS:
            self.fail(
                f"unknown kernel form {form_token.text!r}; forms: {', '.join(FORMS)}", form_token
            )
        self.expect(")")
        self.expect("(")
        inputs = self.comma_list(self.use, ")")
        self.expect("->")
        self.expect("(")
        output_tokens = self.pos
        self.comma_list(self.label, ")")
        self.expect("{")
        nodes = []
        self.block, self.blocks = self.blocks, self.blocks + 1
        while not self.at("}"):
            nodes.append(self.equation())
        self.block = None
        self.next()
        resume, self.pos = self.pos, output_tokens
        outputs = self.comma_list(self.use, ")")
        self.pos = resume
        return Kernel(name, form_token.text, tuple(nodes), tuple(inputs), tuple(outputs))

    def update(self, earlier: list[tuple[Node, Node]]) -> tuple[Node, Node]:
        """`update %param <- %value`, checked as the verifier checks it."""
        update_token = self.expect("update")
        target_token = self.peek()
        target = self.use()
        if target.op != "param":
            self.fail(f"update target {target_token.text} is not a param", target_token)
        self.expect("<-")
        value = self.use()
        problem = update_problem(target, value, {p for p, _ in earlier})
        if problem:
            first = self.updated_at.get(target)
            also = f" (first on line {first})" if first else ""
            self.fail(f"update {target_token.text}: {problem}{also}", update_token)
        self.updated_at[target] = update_token.line
        return target, value

    def body(self) -> None:
        """A nested `graph NAME(...) { ... }` block: a loop body, in a scope of its own."""
        scope = ("env", "defined_at", "defined_in", "block", "blocks", "updated_at", "bodies")
        saved = {key: getattr(self, key) for key in scope}
        for key in ("env", "defined_at", "defined_in", "updated_at", "bodies"):
            setattr(self, key, {})
        self.block, self.blocks = None, 0
        token = self.peek()
        graph, _ = self.graph(nested=True)
        for key, value in saved.items():
            setattr(self, key, value)
        if graph.name in self.bodies:
            self.fail(f"duplicate body {graph.name!r}", token)
        self.bodies[graph.name] = graph

    def graph(self, nested: bool = False) -> tuple[Graph, list[Kernel] | None]:
        graph_token = self.expect("graph")
        name = self.word_or_string("a graph name")
        inputs = self.declarations("input")
        if self.at("state"):
            self.next()
            self.declarations("param")
        self.expect("{")
        outputs, updates, kernels = [], [], []
        while not self.at("}"):
            token = self.peek()
            if token.kind == "name":
                self.equation()
            elif self.at("kernel"):
                kernels.append(self.kernel())
            elif self.at("return"):
                self.next()
                if outputs:
                    self.fail("a graph has one return", token)
                outputs = self.uses()
            elif self.at("update"):
                updates.append(self.update(updates))
            elif self.at("graph"):
                self.body()
            else:
                self.fail(
                    f"expected an equation, 'return', 'update' or 'kernel', found {token.text!r}"
                )
        self.next()
        if not nested and self.peek().kind != "end":
            self.fail(f"unexpected {self.peek().text!r} after the end of the graph")
        graph = Graph(outputs, updates, inputs=inputs, name=name)
        try:
            verify(graph, kernels or None)
        except VerifyError as error:
            self.fail(str(error), graph_token)
        return graph, kernels or None


def parse(text: str, filename: str = "<gir>") -> tuple[Graph, list[Kernel] | None]:
    """Read `print_graph(graph, kernels)` text back: (graph, kernels or None)."""
    parser = Parser(text, filename)
    try:
        return parser.graph()
    except RecursionError:
        parser.fail("values nested too deeply")


def parse_graph(text: str, filename: str = "<gir>") -> Graph:
    """Read back the text `print_graph` writes; params get zero-filled storage."""
    return parse(text, filename)[0]
