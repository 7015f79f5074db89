"""Latency on the deployment backend: export and run (:mod:`.backends`), interleaved timing (:mod:`.timing`), the
per-layer latency table the allocation reads (:mod:`.table`), and pruning to a measured latency (:mod:`.target`).

Imports :mod:`yolo_nexp.pruning`'s groups and allocation; the pruner imports this package only inside functions.
"""
