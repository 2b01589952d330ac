"""Report data: frames and strings computed from a suite's records, never files or figures
(those are in ``plots/``, which imports this module; this module never imports ``plots``).

This module is the report's public face: it re-exports the names of the modules that compute
it (issue #22: one job each), so ``from bench.report import ...`` is the one import callers need:

- ``bench.report_frames``: which records count (latest per job, one baseline, ok / failed seeds,
  folded budgets, the longest fine-tuning);
- ``bench.report_cells``: one cell from its seeds (``SEED_RULE``, CI, Welch test, its text);
- ``bench.report_sizes``: storage and ratios of compressed layers;
- ``bench.report_tables``: the accuracy, fit and convergence tables and their Markdown;
- ``bench.report_equal_budget``: accuracy of every method at common parameter counts.
"""
from __future__ import annotations

from bench.report_cells import (ACC_NOTE, CELL, CHANCE_MARGIN, MIN_CI_SEEDS, SEED_RULE,  # noqa: F401
                                chance_accuracy, ci_halfwidth, ci_shown, collapsed_seeds, format_acc, format_cell,
                                seed_counts, welch_p)
from bench.report_equal_budget import equal_budget, measured_points  # noqa: F401
from bench.report_frames import (UNKNOWN_BASELINE, baseline_split, budget_order, finetune_epochs,  # noqa: F401
                                 fold_budgets, longest_finetune, records_frame, reference_rows)
from bench.report_sizes import (INDEX_BITS, SIZE_MARK, SIZE_TOLERANCE, SPARSE_COUNT, SPARSE_METHODS,  # noqa: F401
                                VALUE_BITS, is_sparse, layer_storage, network_ratio, ratio_text, record_storage,
                                target_ratios)
from bench.report_tables import (TABLE_NOTE, accuracy_summary, accuracy_table, convergence_table,  # noqa: F401
                                 fit_summary, markdown_table, status_line)
