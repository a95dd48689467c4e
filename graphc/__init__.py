"""graphc: a graph compiler for small and medium numerical models on the CPU."""

from graphc import onnx  # noqa: E402 (after the frontend it builds on; imports onnx lazily)
from graphc.errors import CompileError, DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend import distributed, nn, optim, random
from graphc.frontend.composites import (
    clip,
    cumsum,
    gelu,
    layer_norm,
    leaky_relu,
    log_softmax,
    logsumexp,
    one_hot,
    relu,
    scaled_dot_product_attention,
    silu,
    softmax,
    softplus,
    stack,
)
from graphc.frontend.convolution import (
    avg_pool,
    avg_pool2d,
    conv,
    conv1d,
    conv2d,
    max_pool,
    max_pool2d,
)
from graphc.frontend.functions import (
    MATH_FUNCTIONS,
    Program,
    abs,
    ceil,
    check_grad,
    compile,
    concat,
    evaluate,
    expand_dims,
    floor,
    floor_divide,
    grad,
    jvp,
    maximum,
    minimum,
    remainder,
    round,
    scatter_add,
    sign,
    squeeze,
    stop_gradient,
    take,
    where,
)
from graphc.frontend.nn import load, save
from graphc.frontend.scan import scan
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
    "avg_pool",
    "avg_pool2d",
    "check_grad",
    "compile",
    "concat",
    "conv",
    "conv1d",
    "conv2d",
    "distributed",
    "const",
    "evaluate",
    "grad",
    "input",
    "jvp",
    "load",
    "log_softmax",
    "logsumexp",
    "matmul",
    "max_pool",
    "max_pool2d",
    "maximum",
    "minimum",
    "nn",
    "one_hot",
    "onnx",
    "optim",
    "param",
    "random",
    "relu",
    "save",
    "sign",
    "softmax",
    "stop_gradient",
    "where",
    # wave 2: elementwise, shape, activations, normalisation, attention
    "ceil",
    "clip",
    "cumsum",
    "expand_dims",
    "floor",
    "floor_divide",
    "gelu",
    "layer_norm",
    "leaky_relu",
    "remainder",
    "round",
    "scaled_dot_product_attention",
    "scan",
    "silu",
    "softplus",
    "squeeze",
    "stack",
    # wave 2: gathers (random numbers: gc.random)
    "scatter_add",
    "take",
]

# exp, log, log1p, sin, cos, tanh, sqrt, sigmoid, atan ...: one per math op of the registry
globals().update(MATH_FUNCTIONS)
__all__ += sorted(MATH_FUNCTIONS)
