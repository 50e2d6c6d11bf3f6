"""Hunt 26: real models with a free batch and a free sequence length (README "### One artifact for every
batch size", "### One artifact for every sequence length"). Each real model compiles once with its dims
free and once static; every sample's integers are the same alone, in batches of 3 and 8 (one call of the
symbolic library) and padded into a larger bucket; the outputs match float onnxruntime as the static
artifact's do; shapes outside the range are refused. The fast tests are the families a real model failed
on, as small synthetic graphs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import runtime
from frontends import CompileError, load_onnx
from frontends.onnx_import import FreeDim


def _ids_and_mask(path, dims=("batch_size", "sequence_length")):
    """y = x * mask, both inputs [batch_size, sequence_length]: a BERT export's two inputs sharing dim names."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "mask"], ["y"], name="masked")], "pair",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims)),
                               helper.make_tensor_value_info("mask", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(dims))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_every_dynamic_input_named_at_once(tmp_path):
    """A file with named dynamic dims (`batch_size`, `sequence_length`) compiled without --input-shape: one
    refusal names both inputs and gives the flags for both (it named the ids alone, then, on the next try,
    the mask), and says that a dim past the batch may stay free as a range."""
    p = _ids_and_mask(tmp_path / "pair.onnx")
    with pytest.raises(CompileError, match=r"inputs 'x' \(batch_sizexsequence_length\), 'mask' "
                                           r"\(batch_sizexsequence_length\) have dynamic dimensions; fix them with "
                                           r"--input-shape x:Nx<size> --input-shape mask:Nx<size> .*range \(1..512\) "
                                           r"stays free.*\(sequence_length\) take the same value"):
        load_onnx(p)


@pytest.mark.parametrize("shapes, needle", [
    ({"x": (FreeDim(), FreeDim("seq", 1, 32)), "mask": (FreeDim(), 32)}, "'sequence_length'.*seq=1..32 and 32"),
    ({"x": (FreeDim(), 8), "mask": (1, 8)}, "'batch_size'.*a free n and 1"),
])
def test_inputs_sharing_a_dim_name_must_agree(tmp_path, shapes, needle):
    """Inputs the file gives one dim name must get one value from --input-shape: a BERT's ids free 1..512
    with its mask fixed died in onnxruntime's shape inference ("Incompatible dimensions" at an Add inside
    the encoder), naming neither input; now refused before import, naming both and the dim."""
    p = _ids_and_mask(tmp_path / "pair.onnx")
    with pytest.raises(CompileError, match=rf"inputs 'x' and 'mask' share the dim {needle}"):
        runtime.compile_model(p, "x86", tmp_path / "a", input_shapes=shapes, progress=False)
    assert not (tmp_path / "a").exists()
