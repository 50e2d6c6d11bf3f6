"""TVMScript's decorators get the caller's stack from `targets.script_frames` (frames and lines as
`inspect.stack()` gives them, without its walk over `sys.modules` per frame), and still parse."""

import inspect

import numpy as np
import tvm
from tvm.script import tirx as T

import targets  # noqa: F401  (installs the stack)
from targets import script_frames


def _both(depth: int):
    if depth:
        return _both(depth - 1)
    return inspect.stack(), script_frames.stack()  # one line: the same line numbers


def test_stack_is_inspects():
    theirs, ours = _both(12)
    assert len(ours) == len(theirs) > 12
    for a, b in zip(theirs, ours):
        assert (a.frame, a.filename, a.lineno, a.function, a.code_context, a.index) == \
            (b.frame, b.filename, b.lineno, b.function, b.code_context, b.index)


def test_parsers_take_it_and_still_parse_closures():
    import tvm.tirx.script.parser.entry as entry

    assert entry.inspect.stack is script_frames.stack
    width = 8  # a closure variable the parser resolves from the enclosing frame

    @T.prim_func
    def double(a: T.Buffer((width,), "int32"), b: T.Buffer((width,), "int32")):
        for i in range(width):
            b[i] = a[i] * 2

    lib = tvm.tirx.build(double, target="llvm")
    a = np.arange(width, dtype=np.int32)
    b = tvm.runtime.tensor(np.zeros(width, np.int32))
    lib(tvm.runtime.tensor(a), b)
    np.testing.assert_array_equal(b.numpy(), 2 * a)
