"""Where the accuracy goes on the real model: every prunable set cut alone, and what the allocation predicted.

For each linked set of the real YOLOv8s (``benchmarks/real_model.py``), a fresh copy of the dense model is pruned
with only that set cut to ``--fraction`` of its channels (the default criterion ranks them, the default lsq repair
folds them), and the fidelity mAP50-95 is measured. Beside it: the MACs the cut saves and the distortion the
``sensitivity`` allocation's estimate (``estimate=lsq``, measured once on the dense model with the same
calibration) predicts for that cut. The allocation orders cuts by estimated distortion per MAC saved, so the
table shows, layer by layer, whether that order follows what the cuts cost in mAP, and where it does not.

With ``--errors`` the same one-set prunes are also compared with the dense model on the calibration images, by
several output errors (``output_errors``), each ranked against the mAP drop.

Usage:
    python benchmarks/layer_study.py --errors --out benchmarks/results/layer_study-real.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import ResultStore, command_line, publish  # noqa: E402
from benchmarks.real_model import RealModel, validate  # noqa: E402

CALIBRATION = dict(batches=4, batch=8)  # as the real-model criteria tables: 32 images at 640 px


class OneSetPlan:
    """Stands in for the pruner's plan: only the set named ``target`` is cut, to the widest allowed width at or below
    ``fraction`` of its channels; on the first call it also records every set's estimated distortion curve."""

    def __init__(self, fraction: float):
        self.fraction, self.target, self.curves, self.widths = fraction, None, None, None

    def __call__(self, det, groups, calib, *args, **kwargs):
        from yolo_nexp.pruning import allocation as alloc
        from yolo_nexp.pruning.groups import linked_sets
        from yolo_nexp.pruning.lsq_sensitivity import sensitivity_curves

        sets = linked_sets(groups, det)
        names = {m: n for n, m in det.named_modules()}
        keys = [names[s[0].module] for s in sets]
        widths = alloc.removal_steps(sets, 1)
        if self.curves is None:  # the dense model, the calibration of every run: the same estimate each time
            curves = sensitivity_curves(det, sets, widths, calib, "lsq", calib.images[:1], verbose=False)
            self.curves, self.widths = dict(zip(keys, curves)), dict(zip(keys, widths))
        kept = [ws[0] for ws in widths]
        if self.target is not None:
            i = keys.index(self.target)
            kept[i] = self.width(self.target)
        return (*alloc.expand(sets, kept), 0.0)

    def width(self, key: str) -> int:
        ws = self.widths[key]
        return max([w for w in ws if w <= ws[0] * self.fraction] or [ws[-1]])

    def estimate(self, key: str) -> float:
        """The estimated distortion at the cut's width (the curve's own point, or interpolated between two)."""
        from yolo_nexp.pruning.allocation import _curve, _interpolate

        size = self.widths[key][0]
        return _interpolate(_curve(size, self.curves[key]), size - self.width(key))


def prune_one(real: RealModel, data: str, plan: OneSetPlan, target: str | None):
    """A fresh dense copy with only ``target`` cut (nothing when None); the model and its report."""
    from ultralytics import YOLO

    import yolo_nexp

    model = YOLO(str(real.weights()))
    plan.target = target
    report = yolo_nexp.prune(
        model, ratio=0.5, source=data, imgsz=real.imgsz, round_to=1, seed=0, verbose=False, passes=1, **CALIBRATION
    )  # fmt: skip
    return model, report


def decoded_outputs(model, images) -> list:
    """The decoded head output (B, 4 + nc, anchors) of a ``YOLO``'s eval forward, per calibration batch."""
    import torch

    from yolo_nexp.pruning.sensitivity import _decoded

    with torch.inference_mode():
        return [_decoded(model.model.eval()(x)) for x in images]


def output_errors(outs: list, refs: list, nc: int) -> dict:
    """Ways of measuring how far the pruned outputs are from the dense ones, on the same images (means per anchor):

    - ``sensitivity``: the allocation's own distortion (``pruning.sensitivity.distortion``: class-probability error
      everywhere plus confidence-weighted box error relative to the box size);
    - ``cls`` and ``box``: its two terms apart;
    - ``logit``: the class-logit error weighted by the dense confidence;
    - ``iou``: the dense confidence times (1 - IoU) between the dense and the pruned box of each anchor.
    """
    import torch
    from ultralytics.utils.metrics import bbox_iou

    from yolo_nexp.pruning.sensitivity import distortion

    sums = {k: 0.0 for k in ("sensitivity", "cls", "box", "logit", "iou")}
    for out, ref in zip(outs, refs):
        sums["sensitivity"] += distortion(out, ref, nc)
        p_out, p_ref = out[:, 4 : 4 + nc], ref[:, 4 : 4 + nc]
        conf = p_ref.max(1).values
        sums["cls"] += float((p_out - p_ref).pow(2).sum(1).mean())
        size = ref[:, 2:4].pow(2).sum(1).clamp(min=1.0)
        sums["box"] += float((conf * (out[:, :4] - ref[:, :4]).pow(2).sum(1) / size).mean())
        logit = lambda p: torch.logit(p.clamp(1e-6, 1 - 1e-6))  # noqa: E731
        sums["logit"] += float((conf * (logit(p_out) - logit(p_ref)).pow(2).sum(1)).mean())
        iou = bbox_iou(out[:, :4].transpose(1, 2), ref[:, :4].transpose(1, 2), xywh=True).squeeze(-1)
        sums["iou"] += float((conf * (1 - iou)).mean())
    return {k: v / len(outs) for k, v in sums.items()}


def measure(real: RealModel, data: str, plan: OneSetPlan, key: str, store: ResultStore, errors, reference) -> None:
    """Prune set ``key`` alone once and fill what the stores lack: its mAP50-95 (``store``) and, with ``reference``
    (calibration images and the dense outputs on them), its output errors (``errors``)."""
    t = time.perf_counter()
    model, report = prune_one(real, data, plan, key)
    seconds = time.perf_counter() - t
    if key not in store:
        store.add(
            key, {"cut": report.macs_reduction, "map": validate(model, data, real.imgsz)["map"], "seconds": seconds}
        )
    if reference is not None and key not in errors:
        images, refs = reference
        errors.add(key, output_errors(decoded_outputs(model, images), refs, model.model.model[-1].nc))


def spearman(a: list[float], b: list[float]) -> float:
    import numpy as np

    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fraction", type=float, default=0.5, help="share of its channels each set keeps")
    ap.add_argument("--render", action="store_true", help="only tabulate the sets already in the store (no new runs)")
    ap.add_argument("--errors", action="store_true", help="also measure the output errors of every one-set prune")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    from ultralytics import YOLO

    import yolo_nexp.pruning.pruner as pruner
    from yolo_nexp.scoring.sources import calibration_batches

    real = RealModel()
    data = real.data()
    dense = validate(YOLO(str(real.weights())), data, real.imgsz)["map"]
    plan = OneSetPlan(args.fraction)
    pruner._plan = plan  # the pruner calls its module-level _plan: every run cuts one set only
    prune_one(real, data, plan, None)  # enumerates the sets and records the estimate on the dense model
    store = ResultStore(args.out.with_suffix(".json") if args.out else None)
    errors = ResultStore(args.out.with_name(args.out.stem + "-errors.json") if args.out else None)
    reference = None
    if args.errors:  # the dense outputs on all calibration images, once
        images = list(calibration_batches(data, imgsz=real.imgsz, seed=0, **CALIBRATION))
        reference = (images, decoded_outputs(YOLO(str(real.weights())), images))
    rows = []
    for key in plan.curves:
        if not args.render and (key not in store or (args.errors and key not in errors)):
            measure(real, data, plan, key, store, errors, reference)
        if key not in store:
            continue
        r = store[key]
        est = plan.estimate(key)
        rows.append((key, plan.widths[key][0], plan.width(key), r["cut"], est, r["map"]))
    drop = [dense - m for *_, m in rows]
    per_mac = [d / max(c, 1e-9) for d, (_, _, _, c, _, _) in zip(drop, rows)]
    est_per_mac = [e / max(c, 1e-9) for _, _, _, c, e, _ in rows]
    lines = [
        "# Where the accuracy goes: each prunable set cut alone on the real model",
        "",
        f"Command: `{command_line()}`",
        "",
        f"Baseline: {real.describe()}; dense mAP50-95 **{dense:.3f}**. Each row prunes a fresh dense copy with only that "
        f"set cut to {args.fraction:.0%} of its channels (nexp_lsq ranks them, lsq repair, one pass, calibration "
        f"{CALIBRATION['batches']} batches of {CALIBRATION['batch']} training images at {real.imgsz} px, seed 0) and "
        "validates it (square inputs, NMS never cut). `estimate` is the distortion the sensitivity allocation's lsq "
        "estimate predicts for that cut (on the dense model, the first calibration batch); the allocation removes "
        "steps in order of estimate per MAC saved, lowest first.",
        "",
        f"Spearman rank correlation, over the {len(rows)} of {len(plan.curves)} sets measured: estimate vs mAP drop **{spearman([r[4] for r in rows], drop):.2f}**; "
        f"estimate per MAC vs mAP drop per MAC **{spearman(est_per_mac, per_mac):.2f}**.",
        "",
    ]
    measured = [i for i, r in enumerate(rows) if r[0] in errors]
    if measured:
        lines += [
            f"Measured output errors of the same one-set prunes against the dense model, on all {CALIBRATION['batches']} "
            f"x {CALIBRATION['batch']} calibration images (`--errors`; `output_errors` says what each is), for the "
            f"{len(measured)} sets measured: Spearman of each error per MAC saved against the mAP drop per MAC saved "
            "(and of the error itself against the drop).",
            "",
            "| error | vs drop per MAC | vs drop |",
            "|---|---|---|",
        ]
        for name in next(iter(errors.values())):
            e = [errors[rows[i][0]][name] for i in measured]
            ep = [x / max(rows[i][3], 1e-9) for x, i in zip(e, measured)]
            dp, d = [per_mac[i] for i in measured], [drop[i] for i in measured]
            lines.append(f"| {name} | {spearman(ep, dp):.2f} | {spearman(e, d):.2f} |")
        lines.append("")
        lines.append("Per set, the one-set table:")
        lines.append("")
    rank_est = {i: k for k, i in enumerate(sorted(range(len(rows)), key=lambda i: est_per_mac[i]))}
    rank_drop = {i: k for k, i in enumerate(sorted(range(len(rows)), key=lambda i: per_mac[i]))}
    lines += [
        "| set (first conv) | width | MACs cut | estimate | mAP50-95 | drop | drop per % MACs | rank by est./MAC "
        "| rank by drop/MAC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, (key, w0, w1, cut, est, m) in enumerate(rows):
        lines.append(
            f"| {key} | {w0} -> {w1} | {cut:.1%} | {est:.2e} | {m:.3f} | {drop[i]:+.3f} | "
            f"{drop[i] / max(cut * 100, 1e-9):+.3f} | {rank_est[i] + 1} | {rank_drop[i] + 1} |"
        )
    publish("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
