"""Concatenate many tensors as a tree of small concatenations.

    concat([h_0, ..., h_299])  ->  concat([concat([h_0..h_7]), concat([h_8..h_15]), ...])   (FANIN per node)

TOPI's concatenate picks each output element from its inputs by a chain of one `if_then_else`
per input, and FuseOps fuses every input's producer (a requantization to the common scale) into
that chain. An unrolled LSTM's output `concat_t(h_t)` over 50 steps so became a 100-input kernel
whose build took 45 s, and over 300 steps one that did not finish. Nodes of at most FANIN inputs
keep every kernel small, at the price of ~log_FANIN(N) copies of the output; the values are the same.
The nodes above the leaves are opaque kernels (FuseOps would otherwise fuse the tree back into one);
the leaves still fuse with their inputs' producers.
"""

from __future__ import annotations

import tvm
from tvm import relax, topi
from tvm.relax.expr_functor import PyExprMutator, mutator

from frontends.relax_rewrite import mutate_functions

FANIN = 8
OPAQUE = 8  # FuseOps' kOpaque: AnnotateTIROpPattern keeps an op_pattern it finds


@mutator
class _Tree(PyExprMutator):
    def visit_call_(self, call):
        call = super().visit_call_(call)
        if not (isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.concat"):
            return call
        fields = call.args[0]
        if isinstance(fields, relax.Var):
            fields = self.lookup_binding(fields)
        if not isinstance(fields, relax.Tuple) or len(fields.fields) <= FANIN:
            return call
        axis, parts = int(call.attrs.axis), list(fields.fields)
        level = 0
        while len(parts) > FANIN:
            groups = [parts[i:i + FANIN] for i in range(0, len(parts), FANIN)]
            parts = [g[0] if len(g) == 1 else self.builder_.emit(self._node(g, axis, level)) for g in groups]
            level += 1
        return self._node(parts, axis, level)

    def _node(self, parts, axis, level):
        if level == 0:
            return relax.op.concat(parts, axis)
        return self.builder_.call_te(topi.concatenate, parts, axis, primfunc_name_hint="concat_node",
                                     primfunc_attrs={"op_pattern": OPAQUE})


@tvm.transform.module_pass(opt_level=0, name="ConcatTree")
def concat_tree(mod, _ctx):
    """Every concatenation of more than FANIN tensors becomes a tree of concatenations."""
    return mutate_functions(_Tree(mod), mod)
