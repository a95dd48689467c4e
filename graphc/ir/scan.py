"""The loop primitive `scan` (DESIGN §9, `gc.scan`): a body graph run once per step.

A scan node's `body` attribute is an ordinary Graph, traced once by the frontend
(frontend/scan.py), whose inputs are

    carries (the loop state) | xs (one slice per step) | captured (read every step)

and whose outputs are the carries' next values, then the per-step ys. The node's own
inputs are the initial carries, the xs stacked on axis 0 and the captured values (the
params and outer values the body reads: explicit inputs, so autodiff and memory planning
see them). A loop has several results, and a node one type, so each result is a node of
its own, `output=i` (the final carry i, or the ys stacked on axis 0): the nodes of one loop
carry equal `together` keys, and fusion gives them one kernel (codegen/loops.py emits it as
one native loop over the body, compiled once).

    %h: f32[4] = scan %h0, %xs, %w {body=cell, carries=1, length=10, output=0, reverse=False, xs=1}

Differentiation (the rules sit here, like every op's; `passes/autodiff.py` hands in its
differentiators, as `ir` never imports `passes`):
- reverse mode (BPTT): the body's adjoint graph is built once; the forward values it reads
  that change every step (the *residuals*) become extra ys of an augmented forward body, and
  a reverse scan runs the adjoint body over them, carrying the carries' adjoints and the
  sums of the captured values' adjoints. The augmented body extends the original (same
  carries and ys first), so both loops' nodes share one kernel: the forward runs once.
- forward mode: one forward scan over a body that also carries and emits tangents.
"""

from __future__ import annotations

import weakref

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir.graph import Graph, Node, topological_order
from graphc.ir.interp import run_memo, run_nodes
from graphc.ir.ops import OPS, Kind, OpDef, apply, full, register
from graphc.ir.types import FLOATS, TensorType
from graphc.ir.verify import verify

_ROOT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # augmented body -> original
_DERIVED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # body -> {key: derived}
RULES: dict[str, object] = {}  # "differentiate", "tangents": set by passes/autodiff.py


def parts(node_or_attrs, items):
    """`items` (a body's inputs, or a scan node's) split as (carries, xs, captured)."""
    attrs = node_or_attrs.attrs if isinstance(node_or_attrs, Node) else node_or_attrs
    c, x = attrs["carries"], attrs["xs"]
    items = list(items)
    return items[:c], items[c : c + x], items[c + x :]


def stacked(t: TensorType, length: int) -> TensorType:
    return TensorType((length, *t.shape), t.dtype)


def _infer(types, attrs):
    body, length = attrs["body"], attrs["length"]
    if not isinstance(body, Graph):
        raise GraphcError(f"attribute body must be a Graph, got {type(body).__name__}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ShapeError(f"length must be a positive int, got {length!r}")
    c, x = attrs["carries"], attrs["xs"]
    if len(types) != len(body.inputs) or not 0 <= c <= len(body.outputs) or x < 0:
        raise ShapeError(
            f"body {body.name} takes {len(body.inputs)} inputs, got {len(types)} "
            f"(carries={c}, xs={x})"
        )
    carries, xs, captured = parts(attrs, zip(types, body.inputs))
    for role, pairs, want in (
        ("initial carry", carries, lambda b: b.type),
        ("stacked xs", xs, lambda b: stacked(b.type, length)),
        ("captured value", captured, lambda b: b.type),
    ):
        for t, b in pairs:
            if t != want(b):
                error = DTypeError if t.shape == want(b).shape else ShapeError
                raise error(f"{role} {t} does not match body {body.name}'s {b.name}: {want(b)}")
    for i, (out, b) in enumerate(zip(body.outputs, body.inputs[:c])):
        if out.type != b.type:
            raise ShapeError(
                f"body {body.name} returns carry {i} as {out.type} but takes it as {b.type}"
            )
    verify(body)
    output = attrs["output"]
    if not 0 <= output < len(body.outputs):
        raise ShapeError(f"output {output} of a body with {len(body.outputs)} outputs")
    kind = body.outputs[output].type
    return kind if output < c else stacked(kind, length)


def run(body: Graph, values, attrs) -> list[np.ndarray]:
    """Every result of the loop (final carries, stacked ys): the body run step by step."""
    carries, xs, captured = parts(attrs, values)
    c, length = attrs["carries"], attrs["length"]
    ys: list[list] = [[] for _ in body.outputs[c:]]
    steps = range(length - 1, -1, -1) if attrs["reverse"] else range(length)
    for t in steps:
        feed = dict(zip(body.inputs, [*carries, *(x[t] for x in xs), *captured]))
        env = run_nodes(body.outputs, feed)
        results = [env[o] for o in body.outputs]
        carries = results[:c]
        for y, value in zip(ys, results[c:]):
            y.append(value)
    if attrs["reverse"]:
        ys = [y[::-1] for y in ys]
    return [*carries, *(np.stack(y) for y in ys)]


def _ref(values, attrs):
    """Output `output` of the loop; the nodes of one loop share one run of it per run of
    the interpreter (their input arrays are the same objects there)."""
    memo = run_memo()
    if memo is None:
        return run(attrs["body"], values, attrs)[attrs["output"]]
    key = ("scan", attrs["body"], attrs["length"], attrs["reverse"], attrs["carries"])
    key += (attrs["xs"], *map(id, values))
    if key not in memo:
        memo[key] = run(attrs["body"], values, attrs)
    return memo[key][attrs["output"]]


def _checks(node: Node) -> bool:
    """Whether a loop's body checks indices (`gc.take` in it): the loop then reports them."""
    for n in node.attrs["body"].nodes:
        checked = OPS[n.op].checked
        if checked(n) if callable(checked) else checked:
            return True
    return False


def root(body: Graph) -> Graph:
    """The body `body` extends (itself unless an augmented forward body)."""
    return _ROOT.get(body, body)


def _together(node: Node):
    a = node.attrs
    return (root(a["body"]), node.inputs, a["length"], a["reverse"], a["carries"], a["xs"])


def scan_nodes(
    body: Graph, inputs, carries: int, xs: int, length: int, reverse: bool, outputs, names=None
):
    """The scan nodes of results `outputs` (indices into the body's outputs), named `names`."""
    attrs = dict(body=body, carries=carries, xs=xs, length=length, reverse=reverse)
    names = names or [None] * len(outputs)
    return [apply("scan", *inputs, output=i, name=n, **attrs) for i, n in zip(outputs, names)]


def _derived(body: Graph, key, build):
    table = _DERIVED.setdefault(body, {})
    if key not in table:
        table[key] = build()
    return table[key]


def substitute(roots, mapping: dict[Node, Node]) -> list[Node]:
    """`roots` rebuilt with the nodes of `mapping` replaced (everything else shared)."""
    memo = dict(mapping)
    for node in topological_order(roots):
        if node not in memo:
            inputs = [memo[x] for x in node.inputs]
            same = all(a is b for a, b in zip(inputs, node.inputs))
            memo[node] = node if same else node.with_inputs(inputs)
    return [memo[r] for r in roots]


def _fresh(like: Node, name: str, taken: set[str]) -> Node:
    """A new body input typed as `like`, named `name` unless `taken` has it (then `name.N`)."""
    label, n = name, 0
    while label in taken:
        n += 1
        label = f"{name}.{n}"
    taken.add(label)
    return Node("input", (), {"shape": like.shape, "dtype": like.dtype}, like.type, label, None)


# ---- reverse mode ---------------------------------------------------------------------------


class Backward:
    """A body's reverse-mode pieces, for cotangents on the ys of mask `seeded`."""

    def __init__(self, body: Graph, carries: int, xs: int, seeded: tuple[int, ...]):
        self.body = body
        c_in, x_in, w_in = parts({"carries": carries, "xs": xs}, body.inputs)
        c_out, y_out = body.outputs[:carries], body.outputs[carries:]
        self.float_carries = [i for i, n in enumerate(c_in) if n.dtype in FLOATS]
        self.float_captured = [i for i, n in enumerate(w_in) if n.dtype in FLOATS]
        self.float_xs = [i for i, n in enumerate(x_in) if n.dtype in FLOATS]
        taken = {n.name for n in body.inputs}
        carry_seeds = [_fresh(c_out[i], f"ct.{c_in[i].name}", taken) for i in self.float_carries]
        y_seeds = [_fresh(y_out[i], f"ct.y{i}", taken) for i in seeded]
        outs = [c_out[i] for i in self.float_carries] + [y_out[i] for i in seeded]
        wrt = (
            [c_in[i] for i in self.float_carries]
            + [x_in[i] for i in self.float_xs]
            + [w_in[i] for i in self.float_captured]
        )
        adjoints = RULES["differentiate"](outs, [*carry_seeds, *y_seeds], wrt)
        nfc, nfx = len(self.float_carries), len(self.float_xs)
        g_c, g_x, g_w = adjoints[:nfc], adjoints[nfc : nfc + nfx], adjoints[nfc + nfx :]

        forward = set(topological_order(body.outputs)) | set(body.inputs)
        new = [n for n in topological_order(adjoints) if n not in forward]
        read = dict.fromkeys(x for n in new for x in n.inputs if x in forward)
        read.update(dict.fromkeys(a for a in adjoints if a in forward))
        varying = set(c_in) | set(x_in)
        for node in topological_order(body.outputs):
            if any(x in varying for x in node.inputs):
                varying.add(node)
        # the residuals: forward values that change every step, stored as extra ys
        self.residuals = [r for r in read if r in varying and r not in x_in]
        self.x_read = [x for x in x_in if x in read]
        stand_in = {
            r: r if r.op == "input" else _fresh(r, f"r{k}.{r.name}" if r.name else f"r{k}", taken)
            for k, r in enumerate(self.residuals)
        }
        self.augmented = _derived(body, ("augmented", tuple(self.residuals)), self._augment)

        accumulators = [
            _fresh(w_in[i], f"sum.ct.{w_in[i].name}", taken) for i in self.float_captured
        ]
        new_outputs = substitute([*g_c, *g_w, *g_x], stand_in)
        g_c, g_w, g_x = (
            new_outputs[:nfc],
            new_outputs[nfc : nfc + len(g_w)],
            new_outputs[nfc + len(g_w) :],
        )
        sums = [apply("add", a, g) for a, g in zip(accumulators, g_w)]
        # backward body: carries (carry adjoints, captured sums) | xs (y cotangents, residuals,
        # xs read) | captured (the forward's captured values)
        inputs = [*carry_seeds, *accumulators, *y_seeds, *stand_in.values(), *self.x_read, *w_in]
        self.backward = Graph([*g_c, *sums, *g_x], inputs=inputs, name=f"{body.name}.vjp")
        self.carries = nfc + len(accumulators)
        self.xs = len(y_seeds) + len(self.residuals) + len(self.x_read)

    def _augment(self) -> Graph:
        """The forward body that also emits the residuals (one per set of residuals)."""
        body = self.body
        augmented = Graph([*body.outputs, *self.residuals], inputs=body.inputs, name=body.name)
        _ROOT[augmented] = root(body)
        return augmented


def _vjp(node: Node, adjoints: dict[Node, Node]) -> list[Node | None]:
    """The adjoints of a loop's inputs from those of its results (`adjoints`: scan node ->
    its adjoint, for the nodes of one loop: `OpDef.together`), by one reverse scan."""
    a = node.attrs
    body = max((n.attrs["body"] for n in adjoints), key=lambda g: len(g.outputs))
    c, nx, length = a["carries"], a["xs"], a["length"]
    by_output = {n.attrs["output"]: g for n, g in adjoints.items()}
    init, xs, captured = parts(node, node.inputs)
    seeded = tuple(sorted(o - c for o in by_output if o >= c))
    pieces = _derived(body, ("vjp", seeded), lambda: Backward(body, c, nx, seeded))
    n_out = len(body.outputs)
    names = [f"residual({r.name or r.op})" for r in pieces.residuals]  # as memory plans show
    forward = scan_nodes(
        pieces.augmented, node.inputs, c, nx, length, a["reverse"],
        range(n_out, n_out + len(pieces.residuals)), names,
    )  # fmt: skip
    x_in = parts(a, body.inputs)[1]
    x_stacks = [xs[x_in.index(x)] for x in pieces.x_read]
    carry_ct = [by_output.get(i) or full(0.0, init[i]) for i in pieces.float_carries]
    sums = [full(0.0, captured[i]) for i in pieces.float_captured]
    y_ct = [by_output[c + i] for i in seeded]
    inputs = [*carry_ct, *sums, *y_ct, *forward, *x_stacks, *captured]
    nfc, nfw = len(pieces.float_carries), len(pieces.float_captured)
    results = scan_nodes(
        pieces.backward, inputs, pieces.carries, pieces.xs, length, not a["reverse"],
        range(len(pieces.backward.outputs)),
    )  # fmt: skip
    g_init, g_w, g_x = results[:nfc], results[nfc : nfc + nfw], results[nfc + nfw :]
    result: list[Node | None] = [None] * len(node.inputs)
    for i, v in zip(pieces.float_carries, g_init):
        result[i] = v
    for i, v in zip(pieces.float_xs, g_x):
        result[c + i] = v
    for i, v in zip(pieces.float_captured, g_w):
        result[c + nx + i] = v
    return result


# ---- forward mode ---------------------------------------------------------------------------


class Forward:
    """A body that also carries and emits the tangents of the inputs in mask `seeded`
    (indices into the body's inputs): carries (c, tangents of float c) | xs (x, tangents of
    seeded x) | captured (w, tangents of seeded w); outputs (c', tc', y, ty)."""

    def __init__(self, body: Graph, carries: int, xs: int, seeded: tuple[int, ...]):
        c_in, x_in, w_in = parts({"carries": carries, "xs": xs}, body.inputs)
        self.float_carries = [i for i, n in enumerate(c_in) if n.dtype in FLOATS]
        taken = {n.name for n in body.inputs}
        seeds = {}
        for i in sorted({*seeded, *self.float_carries}):
            seeds[body.inputs[i]] = _fresh(body.inputs[i], f"t.{body.inputs[i].name}", taken)
        outs = body.outputs
        tangents = RULES["tangents"](list(outs), seeds)
        c_out, y_out = outs[:carries], outs[carries:]
        t_c = [tangents[i] for i in self.float_carries]
        self.float_ys = [i for i, y in enumerate(y_out) if y.dtype in FLOATS]
        t_y = [tangents[carries + i] for i in self.float_ys]
        tc_in = [seeds[c_in[i]] for i in self.float_carries]
        self.x_seeded = [i for i in range(xs) if x_in[i] in seeds]
        self.w_seeded = [i for i in range(len(w_in)) if w_in[i] in seeds]
        inputs = [
            *c_in, *tc_in, *x_in, *(seeds[x_in[i]] for i in self.x_seeded),
            *w_in, *(seeds[w_in[i]] for i in self.w_seeded),
        ]  # fmt: skip
        self.body = Graph([*c_out, *t_c, *y_out, *t_y], inputs=inputs, name=f"{body.name}.jvp")
        self.carries = carries + len(t_c)
        self.xs = xs + len(self.x_seeded)


def _jvp(node: Node, tangents: list[Node | None]) -> Node:
    a = node.attrs
    body, c, nx = a["body"], a["carries"], a["xs"]
    seeded = tuple(i for i, t in enumerate(tangents) if t is not None)
    pieces = _derived(body, ("jvp", seeded), lambda: Forward(body, c, nx, seeded))
    init, xs, captured = parts(node, node.inputs)
    t_init, t_xs, t_w = parts(node, tangents)
    t_carries = [
        t_init[i] if t_init[i] is not None else full(0.0, init[i]) for i in pieces.float_carries
    ]
    inputs = [
        *init, *t_carries, *xs, *(t_xs[i] for i in pieces.x_seeded),
        *captured, *(t_w[i] for i in pieces.w_seeded),
    ]  # fmt: skip
    o = a["output"]
    nfc = len(pieces.float_carries)
    if o < c:
        if o not in pieces.float_carries:
            return None
        index = c + pieces.float_carries.index(o)
    else:
        if o - c not in pieces.float_ys:
            return None
        index = c + nfc + len(body.outputs) - c + pieces.float_ys.index(o - c)
    (result,) = scan_nodes(
        pieces.body, inputs, pieces.carries, pieces.xs, a["length"], a["reverse"], [index]
    )
    return result


register(
    OpDef(
        "scan",
        Kind.OPAQUE,
        _infer,
        _ref,
        vjp=_vjp,
        jvp=_jvp,
        alone=True,
        kernel_form="scan",
        fuses_inputs=False,
        together=_together,
        checked=_checks,
        cost=0,
    )
)
