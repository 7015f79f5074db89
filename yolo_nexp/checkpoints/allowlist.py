"""The one list of globals a checkpoint may name, and how it may use them.

Derived from the pickles of checkpoints saved by Ultralytics 8.4 (yolov8n and yolo11n): built from yaml
and saved, trained one epoch with ``model.train`` and with the ``yolo train`` CLI (best.pt, last.pt, and a
mid-training last.pt and ``save_period`` epoch file holding the half-precision EMA, AdamW or SGD optimizer
state and ``train_args``), pruned by :func:`yolo_nexp.prune`, fine-tuned with :class:`NexpTrainer`, pruned
inside training by :func:`yolo_nexp.attach`, and a float32 ``torch.save({"model": ...})``. Between them they
name the entries of :data:`CALLABLE` and :data:`STORAGE_MARKERS` and a subset of :data:`MODULE_CLASSES`;
``tests/test_loading.py`` keeps that true.

Two ways of use are told apart (see :mod:`yolo_nexp.checkpoints.pickle_scan`): a stock checkpoint only *calls*
the few harmless callables below, and creates every ``nn.Module`` with ``cls.__new__`` plus its saved
state, never through ``__init__`` (which for some layers downloads or reads files).
"""

from __future__ import annotations

import collections
import functools
import importlib
import pkgutil

import torch
import ultralytics.nn.modules
import ultralytics.nn.tasks
from torch import nn
from ultralytics.utils import IterableSimpleNamespace


def _name(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


# Globals a checkpoint may call with arguments from the file. Each is harmless for any arguments.
CALLABLE: dict[str, object] = {
    # Functions (torch's own tensor rebuild helpers): a tensor from a storage, size, stride and flags.
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,  # wraps a rebuilt tensor in a Parameter
    # Container and namespace classes: every nn.Module's _non_persistent_buffers_set, its OrderedDicts of
    # parameters/buffers/submodules, tensor shapes, and the trainer arguments an EMA or trained model carries.
    "builtins.set": set,
    "collections.OrderedDict": collections.OrderedDict,
    "torch.Size": torch.Size,
    "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
}

# Storage types: inert markers inside a tensor's persistent id (torch maps them to a dtype, never calls them).
# Every dtype's, so that a model kept in bfloat16 or with int8 buffers also loads.
STORAGE_MARKERS: frozenset[str] = frozenset(
    _name(s) for s in torch._storage_classes if s not in (torch.storage.TypedStorage, torch.storage.UntypedStorage)
)


def _module_classes(package) -> dict[str, type]:
    """Every ``nn.Module`` subclass defined in ``package`` or its submodules, by pickled name."""
    modules = [package]
    if hasattr(package, "__path__"):
        prefix = package.__name__ + "."
        modules += [importlib.import_module(m.name) for m in pkgutil.walk_packages(package.__path__, prefix)]
    return {
        _name(obj): obj
        for m in modules
        for obj in vars(m).values()
        if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__ == m.__name__
    }


@functools.lru_cache(maxsize=1)
def module_classes() -> dict[str, type]:
    """Layer and model classes a checkpoint may create (``cls.__new__`` and saved state; never called).

    Enumerated, not listed by hand, so that every layer a stock YOLOv8/YOLO11/... config can contain loads:
    the ``nn.Module`` classes of ``torch.nn.modules``, ``ultralytics.nn.modules`` and ``ultralytics.nn.tasks``.
    Creating one this way runs only ``object.__new__`` and ``nn.Module.__setstate__`` (or the few overrides,
    which fill in defaults for old checkpoints); layers that fetch or read files do so in ``__init__``.
    """
    classes = {}
    for package in (torch.nn.modules, ultralytics.nn.modules, ultralytics.nn.tasks):
        classes.update(_module_classes(package))
    return classes


def allowed_names() -> frozenset[str]:
    """Every global a checkpoint may name."""
    return frozenset(CALLABLE) | STORAGE_MARKERS | frozenset(module_classes())


def safe_globals_for(names) -> list:
    """The ``(object, name)`` entries of ``torch.serialization.safe_globals`` for the allowed ``names`` a file uses.

    Only those a file uses are registered: torch rebuilds its lookup from every registered global at each
    opcode, so registering all ~300 module classes would slow every load.
    """
    objects = {**CALLABLE, **module_classes()}
    return [(objects[n], n) for n in sorted(names) if n in objects]
