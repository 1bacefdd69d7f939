"""Simplify an imported module before compression: fold inference batch norms into the
convs before them, decompose the remaining inference ops, fold constants, tidy bindings.

Every compression pass reads the simplified form (a conv's bias and BN scale as
per-channel constants after it), and lowering starts from it.
"""
from __future__ import annotations

from edgec.compiler.tvm_compat import relax, tvm


def Simplify(fold_batchnorm: bool = True) -> tvm.transform.Pass:
    """The module pass: a Sequential of TVM's own Relax passes."""
    seq = []
    if fold_batchnorm:
        seq.append(relax.transform.FoldBatchnormToConv2D())
    seq += [relax.transform.DecomposeOpsForInference(), relax.transform.FoldConstant(),
            relax.transform.CanonicalizeBindings(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(seq, name="Simplify")
