"""The recovery curve read back from Ultralytics' results.csv: values, and the file closed after reading."""

import gc
import warnings

from yolo_nexp.training.recovery import recovery_curve

RESULTS = "       epoch,  metrics/mAP50(B),  metrics/mAP50-95(B)\n1,0.5,0.25\n2,0.625,0.375\n"  # padded as Ultralytics


def test_recovery_curve_reads_and_closes_results_csv(tmp_path):
    (tmp_path / "results.csv").write_text(RESULTS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        curve = recovery_curve(tmp_path)
        gc.collect()
    assert curve == [{"epoch": 1, "map50": 0.5, "map": 0.25}, {"epoch": 2, "map50": 0.625, "map": 0.375}]
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], "results.csv left open"


def test_no_results_csv_is_an_empty_curve(tmp_path):
    assert recovery_curve(tmp_path) == []
