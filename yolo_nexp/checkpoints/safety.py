"""Refuse a checkpoint before anything in it is unpickled, naming what it would import or call.

The file's pickles are read statically (:mod:`yolo_nexp.checkpoints.pickle_scan`) and compared with the one allowlist
(:mod:`yolo_nexp.checkpoints.allowlist`). This check gives the refusal its names and happens before any object is
built; the guard that holds even if it were wrong is torch's restricted unpickler in
:mod:`yolo_nexp.checkpoints.loader`, which is given only the allowed globals the file uses.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from yolo_nexp.checkpoints.allowlist import CALLABLE, allowed_names, module_classes
from yolo_nexp.checkpoints.pickle_scan import PickleReferences, scan_pickle

# torch.save(..., _use_new_zipfile_serialization=False) starts with a pickled magic number (protocol 2, LONG1).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19."
_SHOWN = 8  # offending globals named in one message


class UnsafeCheckpointError(ValueError):
    """A checkpoint names globals outside the allowlist, or uses allowed ones in ways a stock checkpoint never does.

    Attributes:
        offending (list[str]): What was refused, e.g. ``posix.system`` or ``ultralytics.nn.modules.Conv (called)``.
    """

    def __init__(self, message: str, offending: list[str]):
        super().__init__(message)
        self.offending = offending


def _unreadable(path: Path, arg: str, why: str) -> ValueError:
    return ValueError(
        f"{arg}: '{path}' is not a readable PyTorch checkpoint (corrupt, truncated or another format: {why}); "
        f"give a .pt saved by Ultralytics."
    )


def read_pickles(path: str | Path, arg: str = "model") -> list[bytes]:
    """The pickles inside a torch zip checkpoint (``*.pkl`` members), read without unpickling them.

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If the file is not a torch zip checkpoint (text, truncated, legacy format, no pickle).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{arg}: '{path}' not found; give the path of a .pt checkpoint or a model yaml.")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if head == _LEGACY_MAGIC:
        raise ValueError(
            f"{arg}: '{path}' is in torch's legacy (non-zip) format, which cannot be checked before unpickling; "
            f"re-save it with a current torch (torch.save), or pass trust=True only if you trust the file."
        )
    try:
        with zipfile.ZipFile(path) as z:
            members = z.infolist()
            if len({m.filename for m in members}) != len(members):  # torch might read another copy than this scan
                raise ValueError("duplicate member names")
            pickles = [m for m in members if m.filename.endswith(".pkl")]
            if not pickles:
                raise ValueError("it holds no pickle")
            return [z.read(m) for m in pickles]
    except Exception as e:  # BadZipFile, OSError, zlib.error, struct.error, EOFError...: all mean a damaged file
        raise _unreadable(path, arg, str(e) or type(e).__name__) from None


def checkpoint_references(path: str | Path, arg: str = "model") -> PickleReferences:
    """What the checkpoint's pickles import, call and create (nothing is imported or unpickled).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable torch zip checkpoint, or a pickle in it is truncated or malformed.
    """
    refs = PickleReferences()
    for data in read_pickles(path, arg):
        try:
            refs.update(scan_pickle(data))
        except ValueError as e:
            raise ValueError(f"{arg}: '{path}' is corrupt ({e}); re-save or re-download it.") from None
    return refs


def offending(refs: PickleReferences) -> list[str]:
    """What a stock Ultralytics checkpoint never has: names outside the allowlist, calls of layer classes, ...

    Returns:
        (list[str]): Each offending global (``(called)``/``(created)`` when the name is allowed but its use is not).
    """
    allowed, classes = allowed_names(), module_classes()
    found = sorted(n for n in refs.names if n not in allowed)
    # A layer class called with arguments runs its __init__ (some download or open files); stock files never do.
    found += sorted(f"{n} (called)" for n in refs.called if n in allowed and n not in CALLABLE)
    found += sorted(
        f"{n} (created)"
        for n in refs.created
        if n in allowed and n not in classes and not isinstance(CALLABLE.get(n), type)
    )
    return found + list(dict.fromkeys(refs.unnamed))  # each kind of unnamed call once


def untrusted_globals(path: str | Path) -> list[str]:
    """The offending references of a checkpoint (see :func:`offending`); empty for a stock checkpoint."""
    return offending(checkpoint_references(path))


def refusal(path: str | Path, found: list[str], arg: str = "model") -> UnsafeCheckpointError:
    """The one-line error for a refused checkpoint: what it names, that nothing ran, and how to proceed."""
    names = ", ".join(found[:_SHOWN]) + (f" and {len(found) - _SHOWN} more" if len(found) > _SHOWN else "")
    return UnsafeCheckpointError(
        f"{arg}: '{path}' refers to code a stock Ultralytics checkpoint does not ({names}); it was not loaded and "
        f"nothing in it ran. Pass trust=True only if you trust the file and its source.",
        found,
    )


def check_checkpoint(path: str | Path, trust: bool = False, arg: str = "model") -> PickleReferences:
    """Refuse a checkpoint that would import or call anything outside the allowlist, unless ``trust``.

    Returns:
        (PickleReferences): What the file references (empty when ``trust`` skips the check).

    Raises:
        FileNotFoundError: If there is no such file.
        ValueError: If it is not a readable checkpoint (with ``trust``, only a missing file is checked).
        UnsafeCheckpointError: If it refers to anything outside the allowlist and ``trust`` is False.
    """
    if trust:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{arg}: '{path}' not found; give the path of a .pt checkpoint or a model yaml.")
        return PickleReferences()
    refs = checkpoint_references(path, arg)
    found = offending(refs)
    if found:
        raise refusal(path, found, arg)
    return refs
