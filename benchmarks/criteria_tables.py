"""Markdown tables of the criteria benchmark: retention of dense mAP50-95 per setting and cut, and the margins."""

from __future__ import annotations

import statistics

MIN_GAP = 0.005  # mAP50-95 differences below this are never flagged, whatever the spread
GOALS = {0.10: 0.97, 0.25: 0.80, 0.46: 0.50}  # the real-model issue: one-shot retention of the default


def _mean_spread(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (max(values) - min(values)) / 2


def _cell(values: list[float], dense: float) -> str:
    """Retention (and mAP50-95), mean ± half-range over seeds; mAP50-95 alone when the dense model scores 0."""
    mean, half = _mean_spread(values)
    if dense <= 0:
        return f"{mean:.3f}"
    spread = f" ± {half / dense:.0%}" if len(values) > 1 else ""
    return f"{mean / dense:.0%}{spread} ({mean:.3f})"


def _columns(cells: dict, recover) -> list[tuple[float, str]]:
    return [(cut, "pruned") for cut in cells] + ([(recover, "recovered")] if recover is not None else [])


def table(rows: list, dense: float, recover=None) -> list[str]:
    """One row per setting: retention one-shot at every cut, and after recovery at ``recover``."""
    cols = _columns(rows[0][1], recover)
    cuts = {cut: statistics.mean(r["cut"] for _, cells in rows for r in cells[cut]) for cut in rows[0][1]}
    head = [f"one-shot, -{cuts[c]:.1%} MACs" if k == "pruned" else f"recovered, -{cuts[c]:.1%} MACs" for c, k in cols]
    lines = ["| setting | " + " | ".join(head) + " | prune (s) |", "|---|" + "---|" * (len(cols) + 1)]
    for label, cells in rows:
        seconds = statistics.mean(r["seconds"] for runs in cells.values() for r in runs)  # prune() alone, per cut
        cells_text = " | ".join(_cell([r[k] for r in cells[c]], dense) for c, k in cols)
        lines.append(f"| {label} | {cells_text} | {seconds:.0f} |")
    return lines


def plot(rows: list, dense: float, path, title: str) -> None:
    """Retention against the MACs cut, one line per setting, the seeds' range as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), tight_layout=True)
    for label, cells in rows:
        cuts = sorted(cells)
        x = [100 * statistics.mean(r["cut"] for r in cells[c]) for c in cuts]
        runs = [[r["pruned"] / dense for r in cells[c]] for c in cuts]
        ax.plot(x, [100 * statistics.mean(v) for v in runs], marker="o", label=label)
        ax.fill_between(x, [100 * min(v) for v in runs], [100 * max(v) for v in runs], alpha=0.2)
    ax.set_xlabel("MACs removed (%)")
    ax.set_ylabel("share of dense mAP50-95 kept, one-shot (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def margins(rows: list, reference: str, dense: float, recover=None) -> list[str]:
    """``reference`` minus every other row, in points of retention; ``*`` where the seeds do not overlap."""
    cols = _columns(rows[0][1], recover)
    ref = dict(rows)[reference]

    def gap(cells, cut, kind) -> str:
        ours, theirs = [r[kind] for r in ref[cut]], [r[kind] for r in cells[cut]]
        (m1, h1), (m2, h2) = _mean_spread(ours), _mean_spread(theirs)
        flag = " *" if abs(m1 - m2) > max(h1 + h2, MIN_GAP) else ""
        return f"{100 * (m1 - m2) / max(dense, 1e-9):+.1f}{flag}"

    lines = [
        f"`{reference}` minus each row, in points of retention (positive: `{reference}` keeps more; `*`: the "
        f"seeds do not overlap and the gap is at least {MIN_GAP} mAP50-95):",
        "",
        "| setting | " + " | ".join(f"{'one-shot' if k == 'pruned' else 'recovered'} {c:.0%}" for c, k in cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for label, cells in rows:
        if label != reference:
            lines.append(f"| {label} | " + " | ".join(gap(cells, c, k) for c, k in cols) + " |")
    return lines


def goal_lines(rows: list, reference: str, dense: float, recover) -> list[str]:
    """Whether the default met the issue's goals: retention at -10%/-25% and >= every other row."""
    ref = dict(rows)[reference]
    lines = []
    for cut, goal in GOALS.items():
        if cut in ref:
            kept = statistics.mean(r["pruned"] for r in ref[cut]) / max(dense, 1e-9)
            lines.append(
                f"- one-shot at -{cut:.0%} MACs: keeps {kept:.0%} (goal {goal:.0%}): {'met' if kept >= goal else 'missed'}"
            )
    beaten = []
    for label, cells in rows:
        for cut, kind in _columns(cells, recover):
            ours = [r[kind] for r in ref[cut]]
            theirs = [r[kind] for r in cells[cut]]
            (m1, h1), (m2, h2) = _mean_spread(ours), _mean_spread(theirs)
            if m2 - m1 > max(h1 + h2, MIN_GAP):
                beaten.append(f"{label} ({kind} {cut:.0%}: {m2:.3f} vs {m1:.3f})")
    lines.append(
        "- the default is below another setting beyond seed noise: " + ("; ".join(beaten) if beaten else "nowhere")
    )
    return lines


def render(tables: dict, dense: float, cfg: dict, intro: str, command: str, quick: bool) -> str:
    """The whole results file."""
    out = ["# Criteria, repair and allocation on a trained model: share of dense mAP50-95 kept", ""]
    out += [f"Command: `{command}`", "", intro, ""]
    if quick:
        out += [
            "`--quick` is a smoke run on a baseline trained too briefly to detect: it only shows every step runs.",
            "",
        ]
    if "criteria" in tables:
        crit, recover = tables["criteria"], cfg["recover"]
        reference = crit[0][0]  # the default: its criterion with its repair (lsq)
        out += ["## Criteria by repair (sensitivity allocation)", ""]
        out += [*table(crit, dense, recover), "", *margins(crit, reference, dense, recover), ""]
        out += ["Goals of the issue, for the default:", "", *goal_lines(crit, reference, dense, recover), ""]
    if "uniform" in tables:
        uniform = tables["uniform"]
        out += ["## Criteria under uniform allocation, one-shot", ""]
        out += ["Every group loses the same share of its channels, so the criterion alone decides which go.", ""]
        out += [*table(uniform, dense), "", *margins(uniform, uniform[0][0], dense), ""]
    titles = {
        "allocation": "Allocation (mean repair)",
        "bn_recal": "BatchNorm re-estimation",
        "passes": "Passes (recalibrated between, no training) and BatchNorm re-estimation",
        "calibration": "Calibration batches",
        "rivals": "Rival criteria and allocations (lsq repair)",
        "lsq estimates": "The lsq repair in the criterion and in the sensitivity estimate",
        "share": "Passes sharing the calibration images or each reading them all",
        "candidates": "Candidates: the best of several prunes by their fidelity on other calibration images",
        "reconstruct": "Reconstruction: every conv refit to the dense model's outputs after pruning",
        "rivals lsq": "The default against Taylor and Hessian with the same repair, estimate and four passes",
        "sensitivity images": "Sensitivity estimated on the first calibration batch (default) or on all four",
    }
    for name, title in titles.items():
        if name in tables:
            out += [f"## {title}, one-shot", "", *table(tables[name], dense), ""]
    return "\n".join(out)
