"""What the command-line tools share: user errors exit 2 with one line, bugs exit 1, an interruption
(Ctrl-C, SIGTERM) 130 / 143 after the cleanup that a failure gets (no artifact half-written)."""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path
from typing import Callable

from frontends.errors import CompileError, InputError


_SIGNALLED: list[int] = []  # the signals that interrupted the action, as `_interrupt` saw them


def guarded(action: Callable[[], int | None], verbose: bool | Callable[[], bool] = False) -> int:
    """Run `action`; a CompileError prints `error: ...` (with the traceback under -v: `verbose`, or a callable
    asked after the failure where the action parses the flags itself) and
    returns 2, any other exception prints its traceback and returns 1; Ctrl-C (SIGINT) and SIGTERM
    print one line and return 130 / 143, after the cleanups that a failure gets (nothing half-written)."""
    with interrupts_recorded(check=False), _warnings_as_lines():
        try:
            code = action() or 0
            raise_if_interrupted()
            return code
        except BrokenPipeError:  # stdout closed early (`| head`): nothing more to say, and no traceback at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except (Exception, KeyboardInterrupt) as err:
            # a KeyboardInterrupt raised in Python code that TVM called comes back as another error
            # (an IndexError in a schedule's type check): the signal, not the error, is the news
            signum = _SIGNALLED[-1] if _SIGNALLED else signal.SIGINT if isinstance(err, KeyboardInterrupt) else None
            if (verbose() if callable(verbose) else verbose) or (signum is None and not isinstance(err, CompileError)):
                traceback.print_exc()
            if signum is not None:
                _release_quietly(err)
                print(f"error: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
                return 128 + signum
            if isinstance(err, CompileError):
                print(f"error: {err}", file=sys.stderr)
                return 2
            return 1  # an internal error: shown above, distinct from user errors


def _release_quietly(err: BaseException) -> None:
    """Free what the interrupted frames held, with stderr closed: TVM's destructors warn of the state an interrupt
    left ('BlockBuilder destroyed with remaining blocks!'), which came after the one line Ctrl-C is to print."""
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        traceback.clear_frames(err.__traceback__)
        gc.collect()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _warnings_as_lines():
    """Warnings (an input beyond its calibrated range) as `warning: ...` lines on stderr, as errors are: Python's
    form named a line of the CLI's own code ('runtime/run.py:39: RuntimeWarning: ...') and printed it below."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        yield


@contextlib.contextmanager
def interrupts_recorded(check: bool = True):
    """SIGINT / SIGTERM recorded while the body runs (`raise_if_interrupted` then sees one that a fallback
    swallowed), for the CLI's `guarded` and for `compile_model` called from a script, whose Ctrl-C a broad
    `except` could take just the same. The outermost use installs the handlers (main thread only) and, with
    `check`, raises KeyboardInterrupt at the end for a signal nothing re-raised; nested uses do nothing."""
    before = _interruptible()
    if before:
        _SIGNALLED.clear()
    try:
        yield
        if before and check:
            raise_if_interrupted()
    finally:
        if before:
            _SIGNALLED.clear()  # a later action in this process (a test, a script's second call) starts afresh
            for signum, handler in before.items():
                signal.signal(signum, handler)


def raise_if_interrupted() -> None:
    """KeyboardInterrupt where SIGINT / SIGTERM arrived during `guarded`'s action and was swallowed on its way
    up: TVM hands the KeyboardInterrupt raised in Python code it called back as another error, and a broad
    `except` that falls back took it (a Ctrl-C in the sensitivity measurement left those tensors at 8 bits, and
    the compile went on for 15 s and wrote its artifact). Called where a compile may stop: after each stage,
    before an artifact is moved into place."""
    if _SIGNALLED:
        raise KeyboardInterrupt(signal.Signals(_SIGNALLED[-1]).name)


def _interrupt(signum, frame):
    _SIGNALLED.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _interruptible() -> dict:
    """SIGINT and SIGTERM raise KeyboardInterrupt (SIGTERM's default action killed the compile and left
    its temporary files), where Python's own handling is in place: an ignored SIGINT (a background job)
    stays ignored, a caller's handler stays. Handlers live in the main thread only. The handlers replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    before = {}
    for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(signum) is default:
            before[signum] = signal.signal(signum, _interrupt)
    return before


def read_inputs(path: str) -> dict:
    """The arrays of the .npz file at `path` by name; InputError if it is not one."""
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            raise InputError(f"{path}: one array (.npy), not an .npz file of arrays by input name (np.savez(file, "
                             "NAME=array, ...))")
        with data:
            return dict(data)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001  (missing, pickled objects, truncated: all say so)
        raise InputError(f"{path}: not a readable .npz file ({err})") from None


def writable_file(path: str) -> str:
    """`path` as `np.savez` writes it (".npz" appended where missing), after checking that it can be written
    there: before the run, so that a mistyped folder costs no run and gives no traceback."""
    path = path if path.endswith(".npz") else path + ".npz"
    folder = Path(path).parent
    if not folder.is_dir():
        raise InputError(f"{path}: the output directory {folder} does not exist")
    if Path(path).is_dir():
        raise InputError(f"{path}: is a directory; give the output file's name")
    from .artifact import check_writable

    check_writable(Path(path), InputError)
    return path


def emulated(artifact) -> tuple[str, ...]:
    """`--emulate`: the qemu-user prefix that runs this armv7 / riscv64 artifact's executor here."""
    from .artifact import read_manifest
    from .plan import emulator

    return emulator(read_manifest(artifact, check_library=False))
