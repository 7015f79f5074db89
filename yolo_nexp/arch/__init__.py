"""What can be pruned and how: the supported model family, its heads, and the CSP, Ghost and attention blocks
whose channel dependencies Torch-Pruning cannot trace by itself."""
