"""What a person reads: a Markdown table shaped like the paper's Table 1, and a PNG plot of
per-shot consistency, text alignment and motion over each story."""
from __future__ import annotations

import os
import tempfile

from shotstream_jax.eval.table1 import METRICS, PAPER

NOT_COMPUTED = "n/c"
PER_SHOT = (("intra_subject", "intra-shot subject consistency (DINOv2)"),
            ("intra_background", "intra-shot background consistency (CLIP)"),
            ("text_alignment", "text alignment (CLIP)"),
            ("motion", "motion (px / step at 256 px, top 5 %)"))


def _cell(v, key) -> str:
    if v is None:
        return NOT_COMPUTED
    return f"{v:.2f}" if key == "dynamic_degree" else f"{v:.3f}"


def markdown_table(per_video: dict, mean: dict, not_computed: dict) -> str:
    """Rows: each video, the mean, and the paper's ShotStream row; `not_computed` maps a
    metric to the extractors it lacked."""
    head = "| video | " + " | ".join(name for _, name, _ in METRICS) + " |"
    rule = "|---|" + "---:|" * len(METRICS)
    rows = [head, rule]
    for name, r in per_video.items():
        rows.append(f"| {name} | " + " | ".join(_cell(r["metrics"][k], k) for k, _, _ in METRICS) + " |")
    rows.append(f"| **mean ({len(per_video)} videos)** | "
                + " | ".join(_cell(mean[k], k) for k, _, _ in METRICS) + " |")
    rows.append("| ShotStream (paper) | " + " | ".join(_cell(PAPER[k], k) for k, _, _ in METRICS) + " |")
    notes = ["", "All scores: higher is better. Dynamic degree: percentage of dynamic videos "
                 "(per video: 100 dynamic, 0 static)."]
    if not_computed:
        need = sorted({e for es in not_computed.values() for e in es})
        notes.append(f"{NOT_COMPUTED}: not computed ({', '.join(sorted(not_computed))}); "
                     f"give --{' --'.join(need)} to compute them.")
    return "\n".join(rows + notes) + "\n"


def plot(per_video: dict, path: str) -> None:
    """One panel per per-shot series present in any video; one line per video."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, label) for k, label in PER_SHOT if any(k in r["per_shot"] for r in per_video.values())]
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.4 * len(panels)), squeeze=False, sharex=True)
    for ax, (key, label) in zip(axes[:, 0], panels):
        for name, r in per_video.items():
            ys = r["per_shot"].get(key)
            if ys is None:
                continue
            xs = [i + 1 for i, y in enumerate(ys) if y is not None]
            ax.plot(xs, [y for y in ys if y is not None], marker="o", label=name)
        ax.set_ylabel(key.replace("_", " "))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("shot")
    axes[-1, 0].xaxis.get_major_locator().set_params(integer=True)
    if len(per_video) <= 10:
        axes[0, 0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=d)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
