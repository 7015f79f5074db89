"""The backends a model is timed on: their packages, exporting a model the way Ultralytics exports it, and running it.

``onnxruntime`` runs the ONNX file of Ultralytics' exporter (:func:`yolo_nexp.export.export`) with the execution
providers installed (CUDA before CPU where onnxruntime-gpu is installed); ``openvino`` runs Ultralytics'
OpenVINO export on its CPU device. ``tensorrt`` is refused: not supported yet.
"""

from __future__ import annotations

import importlib
import tempfile
from copy import deepcopy
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKENDS = ("onnxruntime", "openvino", "tensorrt")
PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}  # module to import
EXTRAS = {"onnxruntime": "export", "openvino": "openvino", "tensorrt": None}  # pip extra of this project
FORMATS = {"onnxruntime": "onnx", "openvino": "openvino"}  # Ultralytics' export format of each supported backend


class BackendMissing(ValueError):
    """The backend's package is not installed (or the backend is not supported)."""


def check_backend(name: str) -> None:
    """Refuse an unknown backend, one whose package is not installed, and one not supported yet.

    Raises:
        ValueError: For a name outside :data:`BACKENDS`.
        BackendMissing: When the backend's package cannot be imported, naming it and the extra that installs
            it, or when the backend is not supported yet (``tensorrt``).
    """
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown '{name}', choose one of {', '.join(BACKENDS)}.")
    package = PACKAGES[name]
    try:
        importlib.import_module(package)
    except ImportError:
        extra = EXTRAS[name]
        how = f'pip install "yolo-nexp[{extra}]" (or pip install {package})' if extra else f"pip install {package}"
        raise BackendMissing(f"backend={name} needs the '{package}' package, which is not installed: {how}.") from None
    if name not in FORMATS:
        raise BackendMissing(f"backend={name}: not supported yet; use onnxruntime or openvino.")


def check_latency_args(latency, ratio, macs, backend: str, latency_batch: int) -> None:
    """Validate ``latency``, ``backend`` and ``latency_batch``; a backend's package is needed only for a target.

    Raises:
        ValueError: For a latency target given with ``ratio`` or ``macs``, one outside (0, 1), an unknown
            backend, a ``latency_batch`` that is not a whole number >= 1, or a target on a missing backend.
    """
    if latency is not None and (ratio is not None or macs is not None):
        given = "ratio" if ratio is not None else "macs"
        raise ValueError(
            f"latency and {given}: give one of ratio, macs and latency, not two (latency targets the measured speed)."
        )
    if latency is not None and not (isinstance(latency, (int, float)) and not isinstance(latency, bool)):
        raise ValueError(f"latency must be a number in (0, 1), e.g. latency=0.5 (twice as fast); got {latency!r}.")
    if latency is not None and not 0.0 < latency < 1.0:
        raise ValueError(
            f"latency must be the fraction of the dense model's measured latency to reach, in (0, 1), e.g. "
            f"latency=0.5 (twice as fast); got {latency!r}."
        )
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"backend: unknown '{backend}', choose one of {', '.join(BACKENDS)}.")
    if not (isinstance(latency_batch, int) and not isinstance(latency_batch, bool) and latency_batch >= 1):
        raise ValueError(f"latency_batch must be a whole number >= 1 (the batch deployed); got {latency_batch!r}.")
    if latency is not None:
        check_backend(backend)


def export_model(det: nn.Module, backend: str, imgsz: int, batch: int, folder: str | Path) -> Path:
    """Export a detection model for ``backend`` with Ultralytics' exporter, at ``imgsz`` and ``batch``.

    The model is saved as a plain checkpoint in ``folder`` and exported from there by
    :func:`yolo_nexp.export.export` (no parity check), as ``yolo export`` would export a pruned checkpoint.
    """
    from yolo_nexp.export import export

    pt = Path(folder) / "model.pt"
    torch.save({"model": deepcopy(det).float().cpu().eval()}, pt)
    file = export(pt, FORMATS[backend], imgsz, check=False, batch=batch, device="cpu", verbose=False)["file"]
    return Path(file)


def runner(file: str | Path, backend: str, inputs: list[np.ndarray]):
    """A function running the exported ``file`` once on ``inputs`` (one array per model input, in order).

    ``file`` is an ONNX file (for both backends: OpenVINO reads ONNX too) or, for ``openvino``, Ultralytics'
    OpenVINO export folder. The file is read now: it may be deleted once this returns.
    """
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(str(file), providers=ort.get_available_providers())
        feed = {i.name: x for i, x in zip(session.get_inputs(), inputs)}
        return lambda: session.run(None, feed)
    if backend == "openvino":
        import openvino as ov

        path = Path(file)
        path = next(path.glob("*.xml")) if path.is_dir() else path
        compiled = ov.Core().compile_model(str(path), "CPU")
        return lambda: compiled(inputs)
    raise BackendMissing(f"backend={backend}: not supported yet; use onnxruntime or openvino.")


def model_runner(det: nn.Module, backend: str, imgsz: int, batch: int, seed: int = 0):
    """Export ``det`` for ``backend`` and return a function that runs one batch ``(batch, 3, imgsz, imgsz)``."""
    x = np.random.default_rng(seed).random((batch, 3, imgsz, imgsz), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="nexp-latency-") as folder:
        return runner(export_model(det, backend, imgsz, batch, folder), backend, [x])
