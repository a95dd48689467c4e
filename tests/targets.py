"""Properties of generated assembly that hold on every x86-64 host.

Loops must vectorize at the width LLVM's loop vectorizer uses for the JIT's target (ymm on
AVX2, zmm on a CPU that prefers 512-bit vectors, ymm again on an AVX-512 CPU that prefers
256-bit ones), read off the target machine (graphc.codegen.target), never one CPU's
register names.
"""

from __future__ import annotations

import re

from graphc.codegen import target

REGISTER_CLASS = {16: "xmm", 32: "ymm", 64: "zmm"}


def widest_vector_bytes(assembly: str) -> int:
    """Bytes of the widest vector register `assembly` names (0 if none)."""
    sizes = [size for size, name in REGISTER_CLASS.items() if re.search(rf"%{name}\d+", assembly)]
    return max(sizes, default=0)


def assert_vectorized_at_target_width(assembly: str, cpu: target.Target | None = None) -> None:
    """The code uses vectors as wide as the target's loop vectorizer does, and no wider."""
    cpu = cpu or target.host()
    want, got = cpu.preferred_vector_bytes, widest_vector_bytes(assembly)
    assert got == want, (
        f"widest vector register {REGISTER_CLASS.get(got, 'none')}, but the target "
        f"{cpu.cpu} vectorizes loops with {REGISTER_CLASS[want]}"
    )
