"""An edge deployer's day with the README in hand (the third client hunt): a quiet compile in a deployment
script, Ctrl-C at any moment, a board's artifact run here under qemu, targets named by the machine, inputs
whose clipped activations gave plausible outputs, token ids and calibration data with mistakes in them."""

from __future__ import annotations

import re

import numpy as np
import pytest

import runtime
from runtime.compile import main as compile_main


def test_quiet_compile_prints_the_path_and_warnings_only(tmp_path, small_cnn_path, small_calib, capsys):
    """`runtime.compile -q` still printed every stage, the time summary and the check's lines on stderr (it only
    dropped the progress bars): a deployment script's log got 15 lines per model. Warnings stay."""
    out = tmp_path / "a.artifact"
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(out), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out) and captured.err == ""
    assert compile_main([small_cnn_path, "-o", str(tmp_path / "b.artifact"), "-q"]) == 0  # synthetic calibration
    assert [line.split(":")[0] for line in capsys.readouterr().err.splitlines()] == ["[intq] WARNING"]
    assert compile_main([small_cnn_path, "--calib", small_calib, "-o", str(tmp_path / "c"), "--no-check"]) == 0
    assert "[intq] importing" in capsys.readouterr().err  # not quiet: the stages as before


def test_ctrl_c_while_the_compile_cli_imports_tvm_is_one_line(monkeypatch, capsys):
    """The compile CLI imported TVM (3 s) before it could handle Ctrl-C: pressed then, a 40-line traceback
    ending in an import of ml_dtypes or typing."""
    import runtime.compile

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime.compile, "build_parser", interrupted)
    assert compile_main(["model.onnx"]) == 130
    assert capsys.readouterr().err == "error: interrupted (SIGINT)\n"


def test_check_ranges_names_the_activations_an_input_clipped(small_artifact, small_calib, tmp_path, capsys):
    """An input 1.5x the calibration data's ran with no warning (`run` warns only past 1.5x an input's range), while its
    first convs' outputs were clamped at the end of their ranges: `check_ranges` names each such tensor."""
    from runtime.run import main as run_main

    model = runtime.load(small_artifact)
    x = np.load(small_calib)["x"][0]
    assert model.check_ranges({"x": x}) == []  # a calibration sample: nothing past its ranges
    rows = model.check_ranges({"x": 1.5 * x})
    assert rows[0]["tensor"] == "input 'x'" and rows[0]["at_end"] > 0
    kernels = [r for r in rows if r["call"] is not None]
    assert kernels and all("requant" in r["tensor"] or "clip" in r["tensor"] for r in kernels)
    assert all(0 < r["at_end"] <= r["size"] and r["dtype"] in ("int8", "uint8", "int16") for r in rows)
    with pytest.warns(RuntimeWarning, match="beyond its calibrated range") as caught:  # 3x: run's warning too,
        model.check_ranges({"x": 3 * x})  # naming this line, as run's does (it named runtime/saturation.py)
    assert caught[0].filename == __file__
    np.savez(tmp_path / "x.npz", x=1.5 * x)
    assert run_main([small_artifact, "--input", str(tmp_path / "x.npz"), "--check-ranges"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("y: shape [1, 10]") and out[1].startswith("ranges: input 'x' (int8[1, 3, 16, 16]): ")
    assert len(out) == 1 + len(rows) and "at the end of the calibrated range" in out[-1]


def test_token_id_mistakes_are_named_in_the_ids_own_terms(tmp_path):
    """A token-id model given float calibration ids was told 'expected a integer array'; a run with an id of
    2**40 was told of 'id 1.09951e+12', a float no tokenizer makes."""
    from onnx import TensorProto, helper, numpy_helper

    from conftest import saved_model

    table = numpy_helper.from_array(np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32), "table")
    path = saved_model([helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed")],
                       [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 3])],
                       [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, 3, 4])], [table],
                       tmp_path / "e.onnx")
    with pytest.raises(runtime.InputError, match="'ids' has dtype float32; expected an integer array like the "
                                                 "model's int64"):
        runtime.compile_model(path, calib={"ids": np.zeros((2, 1, 3), np.float32)}, progress=False, quiet=True)
    model = runtime.load(runtime.compile_model(path, output=tmp_path / "a", calib={"ids": np.ones((2, 1, 3), np.int64)},
                                               progress=False, quiet=True))
    with pytest.raises(runtime.InputError, match="input 'ids': id 1099511627776 is outside the 10 rows"):
        model.run({"ids": np.array([[1, 2 ** 40, 2]])})


@pytest.mark.parametrize("name, family", [("riscv64", "riscv"), ("aarch64", "arm"), ("x86_64", "x86")])
def test_a_target_given_as_the_machines_name_names_the_family(name, family):
    """`--target riscv64` (the arch the manifest and `uname -m` say) was refused with the list of targets only."""
    from targets import get_target

    with pytest.raises(runtime.CompileError, match=rf"unknown target '{name}' \(did you mean --target {family}, "
                                                   rf"which builds for {name}\?\)"):
        get_target(name)


@pytest.mark.parametrize("text, why", [("x:0..8x3x16x16", "range 0..8: needs 1 <= LO <= HI"),
                                       ("x:8..1x3x16x16", "range 8..1: needs 1 <= LO <= HI"),
                                       ("x: 1x3x16x16", "dim ' 1' holds spaces"), ("x:1xx16x16", "an empty dim")])
def test_an_input_shape_says_which_dim_it_cannot_take(text, why):
    """`--input-shape x:8..1x3x16x16` (a range backwards) or `x: 1x3x...` (a space after the colon) got the
    form expected and no word on which dim was wrong."""
    from frontends import parse_input_shape

    with pytest.raises(runtime.CompileError, match=f"--input-shape '{text}': {re.escape(why)}; expected NAME:D0xD1"):
        parse_input_shape(text)


def test_calibration_on_one_value_is_warned_about(tmp_path, small_cnn_path, capsys):
    """Blank calibration images (a preprocessing slip: all zeros) compiled without a word, and the check, run on
    those same zeros, said cosine 0.9999; on a real input the artifact gave outputs in [-0.54, 0.50] where float
    gives [-5.96, 6.61], every first activation clamped."""
    runtime.compile_model(small_cnn_path, output=tmp_path / "a", calib={"x": np.zeros((4, 3, 16, 16), np.float32)},
                          progress=False, quiet=True)
    assert "[intq] WARNING: calib (the dict given): 'x' holds the one value 0 in every element of every sample" \
        in capsys.readouterr().err


def test_bench_names_an_empty_size_so():
    """`runtime.bench --shape n=0` (timing an empty batch) was told to write DIM=SIZE, which it had."""
    from runtime.bench import parse_sizes

    with pytest.raises(runtime.CompileError, match=r"--shape 'n=0': a size is at least 1"):
        parse_sizes(["n=0"])
    assert parse_sizes(["n=8", "seq=32"]) == {"n": 8, "seq": 32}


def test_check_ranges_of_a_plan_artifact_says_where_to_check(small_artifact, tmp_path):
    """`runtime.run model.riscv.artifact --emulate --check-ranges` died with AttributeError ('PlanModel' has no
    '_new_vm'): the plan executor runs the kernels, not a virtual machine the instrument can watch."""
    from runtime.model import PlanModel

    plan = PlanModel.__new__(PlanModel)  # no executor needed: refused before anything runs
    with pytest.raises(runtime.InputError, match=r"runs in its plan executor: check the same model built for this "
                                                 r"machine \(--target x86\)"):
        plan.check_ranges({"x": np.zeros((1, 3, 16, 16), np.float32)})


def test_an_interrupted_compile_ends_with_its_one_line(capfd):
    """Ctrl-C while a Relax module was being built printed `error: interrupted (SIGINT)` and then TVM's
    'BlockBuilder destroyed with remaining blocks!' from the frames the interrupt left, as the last line."""
    from runtime.cli import guarded

    def action():
        from tvm import relax

        builder = relax.BlockBuilder()
        builder._begin_dataflow_block()  # a block the interrupt leaves open, as a lowering pass's was
        raise KeyboardInterrupt

    assert guarded(action) == 130
    assert capfd.readouterr().err == "error: interrupted (SIGINT)\n"
