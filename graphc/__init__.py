"""graphc: a graph compiler for small and medium numerical models on the CPU."""

from graphc.errors import CompileError, DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend import init as random
from graphc.frontend import nn, optim
from graphc.frontend.composites import log_softmax, logsumexp, one_hot, relu, softmax
from graphc.frontend.functions import (
    Program,
    abs,
    check_grad,
    compile,
    concat,
    cos,
    evaluate,
    exp,
    grad,
    jvp,
    log,
    log1p,
    maximum,
    minimum,
    sigmoid,
    sign,
    sin,
    sqrt,
    stop_gradient,
    tanh,
    where,
)
from graphc.frontend.nn import load, save
from graphc.frontend.tensor import Tensor, const, input, matmul, param
from graphc.runtime import aot

__version__ = "0.1.0"

__all__ = [
    "CompileError",
    "DTypeError",
    "GraphcError",
    "InputError",
    "Program",
    "ShapeError",
    "Tensor",
    "abs",
    "aot",
    "check_grad",
    "compile",
    "concat",
    "const",
    "cos",
    "evaluate",
    "exp",
    "grad",
    "input",
    "jvp",
    "load",
    "log",
    "log1p",
    "log_softmax",
    "logsumexp",
    "matmul",
    "maximum",
    "minimum",
    "nn",
    "one_hot",
    "optim",
    "param",
    "random",
    "relu",
    "save",
    "sigmoid",
    "sign",
    "sin",
    "softmax",
    "sqrt",
    "stop_gradient",
    "tanh",
    "where",
]
