"""The worked automatic-differentiation examples, printed with their values.

Each gradient is a graph: `gc.grad` extends the graph with adjoint nodes and
`gc.jvp` with tangent nodes, which `gc.evaluate` (the reference interpreter) runs and
`gc.compile` compiles like any other graph. Everything is float64.

    python examples/autograd_tour.py
"""

from __future__ import annotations

import math
import sys

import numpy as np

import graphc as gc


def scalar_example() -> None:
    """y = ln x1 + x1·x2 − sin x2 at (2, 5), in reverse and in forward mode."""
    print("1. y = ln(x1) + x1*x2 - sin(x2) at x1 = 2, x2 = 5")
    x1, x2 = gc.input("x1", (), "float64"), gc.input("x2", (), "float64")
    y = gc.log(x1) + x1 * x2 - gc.sin(x2)
    feed = {x1: 2.0, x2: 5.0}
    dy_dx1, dy_dx2 = gc.grad(y, [x1, x2])
    value, reverse1, reverse2 = gc.evaluate([y, dy_dx1, dy_dx2], feed)
    forward1 = gc.evaluate(gc.jvp(y, {x1: 1.0}), feed)
    forward2 = gc.evaluate(gc.jvp(y, {x2: 1.0}), feed)
    print(f"   y          = {value:.12f}   (ln 2 + 10 - sin 5)")
    print(f"   dy/dx1     = {reverse1:.12f}   reverse mode (1/x1 + x2 = 5.5)")
    print(f"   dy/dx1     = {forward1:.12f}   forward mode, tangent x1' = 1")
    print(f"   dy/dx2     = {reverse2:.12f}   reverse mode (x1 - cos x2 = 2 - cos 5)")
    print(f"   dy/dx2     = {forward2:.12f}   forward mode, tangent x2' = 1")
    print(f"   2 - cos 5  = {2 - math.cos(5):.12f}")
    print("\n   the adjoint graph: gc.grad added the nodes after %4 = y, from the seed %5 = dy/dy")
    program = gc.Program([x1, x2], [y, dy_dx1, dy_dx2], name="adjoint")
    print(indent(str(program)))
    step = gc.compile(program)
    print("\n   ... and after simplify (what gc.compile runs):")
    print(indent(step.dump("optimized")))
    compiled = step(2.0, 5.0)
    print(f"   compiled: y, dy/dx1, dy/dx2 = {', '.join(f'{float(v):.12f}' for v in compiled)}")


def broadcast_example() -> None:
    """x1 = ones(2,2), x2 = [1.1], y = x1·(x2+2), z = 3y², out = mean(z)."""
    print("\n2. x1 = ones(2,2), x2 = [1.1], y = x1*(x2+2), z = 3*y**2, out = mean(z)")
    x1, x2 = gc.input("x1", (2, 2), "float64"), gc.input("x2", (1,), "float64")
    y = x1 * (x2 + 2)
    z = 3 * y**2
    out = z.mean()
    feed = {x1: np.ones((2, 2)), x2: np.array([1.1])}
    value = gc.evaluate(out, feed)
    g_z, g_y, g_x1, g_x2 = gc.evaluate(gc.grad(out, [z, y, x1, x2]), feed)
    print(f"   out        = {value:.6f}   (3 * 3.1**2)")
    print(f"   dout/dz    = {g_z.tolist()}   (1/4 each)")
    print(f"   dout/dy    = {g_y.round(12).tolist()}   (6y/4 = 4.65)")
    print(f"   dout/dx1   = {g_x1.round(12).tolist()}   (4.65 * 3.1 = 14.415)")
    print(f"   dout/dx2   = {g_x2.round(12).tolist()}   (shape (1,): summed over the broadcast)")


def linear_twice_example() -> None:
    """A bias-free 1×1 linear layer applied twice, squared error."""
    print("\n3. a bias-free 1x1 linear layer applied twice: loss = (x w w - t)^2")
    w = gc.param("w", np.array([[0.9472]]))
    x, t = gc.input("x", (1, 1), "float64"), gc.input("t", (1, 1), "float64")
    loss = ((x @ w @ w - t) ** 2).sum()
    value, grad_w = gc.evaluate([loss, gc.grad(loss, w)], {x: [[10.0]], t: [[5.0]]})
    wv = 0.9472
    print("   w = 0.9472, x = 10, t = 5")
    print(f"   loss       = {value:.9f}")
    print(f"   dloss/dw   = {grad_w[0, 0]:.9f}")
    print(f"   4(w²x − t)wx = {4 * (wv * wv * 10 - 5) * wv * 10:.9f}")
    worst = gc.check_grad(loss, [w], {x: [[10.0]], t: [[5.0]]})
    print(f"   gc.check_grad: central differences agree to {worst:.1e}")


def indent(text: str) -> str:
    return "\n".join("   " + line for line in text.rstrip().splitlines())


def main(argv=None) -> int:
    scalar_example()
    broadcast_example()
    linear_twice_example()
    return 0


if __name__ == "__main__":
    sys.exit(main())
