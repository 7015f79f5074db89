"""Scoring channels: the calibration sources, the one calibration pass, NEXP, and the criteria (importance objects)."""
