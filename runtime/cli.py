"""What the command-line tools share: user errors exit 2 with one line, bugs exit 1."""

from __future__ import annotations

import sys
import traceback
from typing import Callable

from frontends.errors import CompileError


def guarded(action: Callable[[], int | None], verbose: bool = False) -> int:
    """Run `action`; a CompileError prints `error: ...` (with the traceback under -v) and
    returns 2, any other exception prints its traceback and returns 1."""
    try:
        return action() or 0
    except CompileError as err:
        if verbose:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception:  # an internal error: show it, distinct from user errors
        traceback.print_exc()
        return 1


def emulated(artifact) -> tuple[str, ...]:
    """`--emulate`: the qemu-user prefix that runs this armv7 / riscv64 artifact's executor here."""
    from .artifact import read_manifest
    from .plan import emulator

    return emulator(read_manifest(artifact, check_library=False))
