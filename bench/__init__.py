"""The benchmark suite behind `graphc bench`: graphc against NumPy, PyTorch and JAX.

Installed as `graphc.bench` (pyproject maps this folder there); in a checkout it is also
importable as `bench`. `workloads` defines the cases, `peers` the hand-written peers,
`timing` the side-by-side measurement and `suite` the table and the command.
"""
