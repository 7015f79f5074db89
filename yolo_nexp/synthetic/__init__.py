"""The seeded synthetic dataset generator: shapes drawn on cluttered backgrounds, labels for every task."""
