"""What a pickle would import, call and construct, read statically: nothing is imported or unpickled.

The scan replays the unpickler's stack (with its memo) on pickletools' opcode stream, so it names the
real target of every ``STACK_GLOBAL``, ``REDUCE`` and ``NEWOBJ`` however the names reach the stack
(literal strings, memo references, shuffled with ``POP``/``DUP``). Torch's restricted unpickler
checks *which* globals load; this scan adds *how* they are used, which that unpickler cannot tell
apart: calling an allowed class runs its ``__init__`` with arguments from the file, while a stock
checkpoint only ever creates module objects with ``cls.__new__`` and fills in their state.
"""

from __future__ import annotations

import _compat_pickle
import pickletools
from dataclasses import dataclass, field

_MARK = object()  # stands for a MARK on the simulated stack
_STRING_OPS = {
    "UNICODE",
    "BINUNICODE",
    "SHORT_BINUNICODE",
    "BINUNICODE8",
    "STRING",
    "BINSTRING",
    "SHORT_BINSTRING",
}
_CALL_OPS = {"REDUCE", "OBJ", "INST"}  # run the callable (a class's __init__) with arguments from the file
_NEW_OPS = {"NEWOBJ", "NEWOBJ_EX"}  # cls.__new__(cls, *args): no __init__
_EXTENSION_OPS = {"EXT1", "EXT2", "EXT4"}  # a global looked up by number in copyreg's extension registry


@dataclass(frozen=True)
class Global:
    """A ``module.qualname`` the pickle resolves (a class or function), as it sits on the stack."""

    name: str


@dataclass
class PickleReferences:
    """What one pickle references and how.

    Attributes:
        names (set[str]): Every global it imports (``GLOBAL``, ``INST``, ``STACK_GLOBAL``).
        called (set[str]): Globals it calls with arguments (``REDUCE``, ``OBJ``, ``INST``).
        created (set[str]): Classes it instantiates without ``__init__`` (``NEWOBJ``).
        unnamed (list[str]): What the scan cannot tie to a global: calls of computed objects, extension codes.
    """

    names: set[str] = field(default_factory=set)
    called: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)
    unnamed: list[str] = field(default_factory=list)

    def update(self, other: PickleReferences) -> None:
        """Add another pickle's references (a checkpoint may hold several pickles)."""
        self.names |= other.names
        self.called |= other.called
        self.created |= other.created
        self.unnamed += other.unnamed


def global_name(module: str, name: str) -> str:
    """``module.name`` as torch's restricted unpickler resolves it (Python 2 names mapped to Python 3)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


class _Stack:
    """The unpickler's stack and metastack (MARK starts a new stack), holding only what the scan needs."""

    def __init__(self):
        self.items: list = []
        self.marks: list[list] = []

    def push(self, value) -> None:
        self.items.append(value)

    def pop(self, n: int) -> list:
        if n > len(self.items):
            raise ValueError("stack underflow")
        popped = self.items[len(self.items) - n :]
        del self.items[len(self.items) - n :]
        return popped

    def mark(self) -> None:
        self.marks.append(self.items)
        self.items = []

    def pop_mark(self) -> list:
        if not self.marks:
            raise ValueError("no MARK to pop")
        items, self.items = self.items, self.marks.pop()
        return items

    def top(self):
        if not self.items:
            raise ValueError("empty stack")
        return self.items[-1]


def _describe(value) -> str:
    return value.name if isinstance(value, Global) else "an object built inside the file"


def scan_pickle(data: bytes) -> PickleReferences:
    """Replay ``data``'s opcodes on a simulated stack and collect the globals it names, calls and creates.

    Raises:
        ValueError: If the pickle is truncated or malformed (pickletools cannot read it, or its stack underflows).
    """
    refs, stack, memo = PickleReferences(), _Stack(), {}
    try:
        for op, arg, _ in pickletools.genops(data):
            _step(op, arg, stack, memo, refs)
    except (ValueError, KeyError, IndexError) as e:
        raise ValueError(f"malformed pickle ({e})") from None
    return refs


def _step(op, arg, stack: _Stack, memo: dict, refs: PickleReferences) -> None:
    """Apply one opcode's effect on the stack and memo, recording references."""
    name = op.name
    if name == "MARK":
        stack.mark()
    elif name in ("POP", "POP_MARK") and (name == "POP_MARK" or not stack.items):
        stack.pop_mark()  # like pickle's load_pop: POP on an empty stack drops the mark
    elif name in _STRING_OPS:
        stack.push(arg)
    elif name in ("GLOBAL", "INST"):
        module, qualname = arg.split(" ", 1)
        target = Global(global_name(module, qualname))
        refs.names.add(target.name)
        if name == "INST":
            stack.pop_mark()
            refs.called.add(target.name)
        stack.push(target)
    elif name == "STACK_GLOBAL":
        module, qualname = stack.pop(2)
        if isinstance(module, str) and isinstance(qualname, str):
            target = Global(global_name(module, qualname))
            refs.names.add(target.name)
            stack.push(target)
        else:
            refs.unnamed.append("a STACK_GLOBAL whose name is built inside the file")
            stack.push(None)
    elif name in _EXTENSION_OPS:
        refs.unnamed.append(f"copyreg extension code {arg}")
        stack.push(None)
    elif name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
        memo[len(memo) if name == "MEMOIZE" else arg] = stack.top()
    elif name in ("GET", "BINGET", "LONG_BINGET"):
        stack.push(memo[arg])
    elif name == "DUP":
        stack.push(stack.top())
    elif name in _CALL_OPS or name in _NEW_OPS:
        target = _callable_of(name, stack)
        if isinstance(target, Global):
            (refs.called if name in _CALL_OPS else refs.created).add(target.name)
        else:
            refs.unnamed.append(f"{name} on {_describe(target)}")
        stack.push(None)
    else:
        _generic(op, stack)


def _callable_of(name: str, stack: _Stack):
    """Pop a call's operands and return the callable (or class) it applies."""
    if name == "OBJ":
        return stack.pop_mark()[0]
    n_args = 2 if name == "NEWOBJ_EX" else 1  # NEWOBJ_EX: args and kwargs
    stack.pop(n_args)
    return stack.pop(1)[0]


def _generic(op, stack: _Stack) -> None:
    """Any other opcode: pop what pickletools says it consumes (to its MARK, if it has one), push unknowns."""
    before = op.stack_before
    if pickletools.markobject in before:
        stack.pop_mark()
        stack.pop(before.index(pickletools.markobject))  # items below the mark (a dict, list or set)
    else:
        stack.pop(len(before))
    for _ in op.stack_after:
        stack.push(None)
