"""Fuzzing the `.gir` parser: mutated dumps of real programs parse or are a GraphcError.

The seeds are the printer's own output for a few small programs (a training step with Adam,
layout ops, a reduction with argmax), before and after fusion. Each example applies one to
three mutations (a byte flipped, a token deleted or repeated, two lines swapped) and parses
the result: the outcome must be a graph that passes the verifier and prints to text that
reads back the same, or a GraphcError (ParseError with a caret) — never another exception.
Bounded to stay well under 20 s in CI.
"""

from __future__ import annotations

import re

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import graphc as gc
from graphc.errors import GraphcError
from graphc.ir.graph import location
from graphc.ir.parser import parse
from graphc.ir.printer import print_graph
from graphc.ir.verify import verify
from graphc.passes import lower

EXAMPLES = 1000  # ~10 s; 6000 ran clean locally


def training_step() -> gc.Program:
    with location("mlp.py:1"):
        x, y = gc.input("x", (4, 3)), gc.input("y", (4, 1))
        model = gc.nn.Sequential([gc.nn.Dense(5, "relu"), gc.nn.Dense(1)], seed=0)
        loss = gc.nn.mse_loss(model(x), y)
        optimizer = gc.optim.Adam(model.params(), lr=1e-3)
        return gc.Program([x, y], loss, optimizer.updates(loss), name="train")


def layout() -> gc.Program:
    with location("layout.py:1"):
        x = gc.input("x", (2, 3, 4), "float64")
        w = gc.param("w", np.ones((4, 3)))
        sliced = x[:, 1:, ::2]
        moved = sliced.transpose(2, 0, 1).reshape(2, 4)
        joined = gc.concat([moved, moved * 2.0], axis=0)
        picked = gc.where(joined > 0.5, joined, -joined)
        total = picked.sum(axis=1, keepdims=True)
        return gc.Program([x], [total, (x @ w).max(axis=-1), total.astype("int32")], {}, "lay")


def reductions() -> gc.Program:
    with location('"odd name".py:1'):
        x = gc.input('input "quoted"', (3, 5))
        best = x.argmax(axis=1)
        soft = gc.exp(x - x.max(axis=1, keepdims=True))
        return gc.Program([x], [best, soft / soft.sum(axis=1, keepdims=True)], name="red.uce")


def seeds() -> list[str]:
    texts = []
    for build in (training_step, layout, reductions):
        graph = build().graph
        optimized, kernels, _ = lower(graph)
        texts += [print_graph(graph), print_graph(optimized, kernels)]
    return texts


SEEDS = seeds()
TOKEN = re.compile(r'\s+|%"(?:[^"\\\n]|\\.)*"|"(?:[^"\\\n]|\\.)*"|[%\w.+-]+|.', re.S)


def flip_byte(text: str, data) -> str:
    raw = bytearray(text.encode())
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    return raw.decode("utf-8", errors="replace")


def delete_token(text: str, data) -> str:
    tokens = TOKEN.findall(text)
    at = data.draw(st.integers(0, len(tokens) - 1))
    return "".join(tokens[:at] + tokens[at + 1 :])


def repeat_token(text: str, data) -> str:
    tokens = TOKEN.findall(text)
    at = data.draw(st.integers(0, len(tokens) - 1))
    return "".join(tokens[: at + 1] + tokens[at:])


def swap_lines(text: str, data) -> str:
    lines = text.split("\n")
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(0, len(lines) - 1))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


MUTATIONS = [flip_byte, delete_token, repeat_token, swap_lines]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_mutated_dumps_parse_or_are_graphc_errors(seed, data):
    text = seed
    for mutate in data.draw(st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3)):
        text = mutate(text, data)
    try:
        graph, kernels = parse(text, "fuzz.gir")
    except GraphcError:
        return
    verify(graph, kernels)
    printed = print_graph(graph, kernels)
    again, again_kernels = parse(printed, "printed.gir")
    assert print_graph(again, again_kernels) == printed


def test_seeds_read_back_exactly():
    """The unmutated dumps are valid: every failure above comes from a mutation."""
    for text in SEEDS:
        graph, kernels = parse(text, "seed.gir")
        assert print_graph(graph, kernels) == text
