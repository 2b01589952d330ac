"""Table writers: Markdown, CSV and LaTeX (booktabs) from one frame."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.report import markdown_table


def _latex_escape(value) -> str:
    s = str(value)
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("±", r"$\pm$"), ("×", r"$\times$"), ("δ", r"$\delta$")):
        s = s.replace(a, b)
    return s


def latex_table(frame: pd.DataFrame, caption: str) -> str:
    cols = list(frame.columns)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(caption)}}}",
             r"\begin{tabular}{" + "l" * len(cols) + "}", r"\toprule",
             " & ".join(_latex_escape(c) for c in cols) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, stem: Path, title: str) -> list[Path]:
    """``stem``.md / .csv / .tex; returns the paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".md"), stem.with_suffix(".csv"), stem.with_suffix(".tex")]
    paths[0].write_text(f"# {title}\n\n" + (markdown_table(frame) if len(frame) else "(no data)") + "\n")
    frame.to_csv(paths[1], index=False)
    paths[2].write_text(latex_table(frame, title))
    return paths
