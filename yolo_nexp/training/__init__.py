"""Training a pruned model: trainers that keep the pruned architecture, distillation from the dense model, the
callback that prunes inside a training run, and the recovery step of the ``yolo-nexp prune`` job."""
