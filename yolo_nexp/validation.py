"""Validation whose figures are never cut short by Ultralytics' NMS time limit.

Ultralytics' ``non_max_suppression`` stops after ``2 s + 0.05 s x batch`` per call, warns "NMS time limit ...
exceeded" and drops the predictions of the images it did not reach. On a busy CPU, at validation's conf 0.001,
with many candidates (crowded images, a damaged model) it fires, and the mAP it reports is lower than the
model's: slower or noisier models lose more, which biases every comparison. While :func:`uncut_nms` is active
the limit is lifted for every NMS in this process (validation during training included), and any warning
that still appears is counted, so a report can say whether a figure was cut.
"""

from __future__ import annotations

import inspect
import logging
import math
from contextlib import contextmanager
from typing import Iterator

from ultralytics.utils import LOGGER, nms

NMS_WARNING = "NMS time limit"


class NmsCuts(logging.Handler):
    """Counts Ultralytics' "NMS time limit ... exceeded" warnings while attached to its logger."""

    def __init__(self):
        """Start at zero."""
        super().__init__(level=logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        """Count one record if it is the NMS time-limit warning."""
        if NMS_WARNING in record.getMessage():
            self.count += 1


@contextmanager
def uncut_nms() -> Iterator[NmsCuts]:
    """Within the block, every Ultralytics NMS runs to the end (no time limit); yields the count of cut NMS calls.

    Examples:
        >>> with uncut_nms() as cuts:
        ...     metrics = model.val(data="coco128.yaml")
        >>> assert cuts.count == 0
    """
    original = nms.non_max_suppression
    signature = inspect.signature(original)

    def without_time_limit(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.arguments["max_time_img"] = math.inf  # time_limit = 2 s + max_time_img x batch
        return original(*bound.args, **bound.kwargs)

    cuts = NmsCuts()
    nms.non_max_suppression = without_time_limit
    LOGGER.addHandler(cuts)
    try:
        yield cuts
    finally:
        LOGGER.removeHandler(cuts)
        nms.non_max_suppression = original
