"""Pruning: the prunable channel groups, how many channels each loses (allocation, sensitivity), the repair of
what a removed channel fed its consumers, and the pruner that puts them together."""
