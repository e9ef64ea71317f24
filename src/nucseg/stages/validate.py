"""Stage `validate`: the raw data's manifest (`core.manifest`), checked by a Great Expectations
suite (`core.data_checks`). Bad data stops the pipeline: the stage exits non-zero and
`reports/validation.md` names each offending image and the expectation it broke.

The summary records the data version (`data.dvc`'s md5). Stages that tag their MLflow runs with
it depend on the summary, not on the ~30k data files: `dvc status` then hashes those once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nucseg import io
from nucseg.config import get_logger
from nucseg.core.data_checks import expectation_suite, render_report, run_suite, summarize, tolerated
from nucseg.core.manifest import build_manifest
from nucseg.mlops.tracking import data_md5

log = get_logger("nucseg.validate")


class ValidationFailed(RuntimeError):
    """Raised when the data breaks the suite; the message points to the report."""


def run(params: dict[str, Any], manifest_path: str | Path = "artifacts/manifest.csv",
        report_path: str | Path = "reports/validation.md",
        summary_path: str | Path = "reports/data_summary.json") -> dict[str, Any]:
    data, cfg = params["data"], params["validate"]
    manifest = build_manifest(data["train_dir"], data.get("test_dir"), limit=int(data.get("limit", 0)))
    failures = run_suite(manifest, expectation_suite(cfg["min_side"], cfg["max_mask_coverage"],
                                                     cfg["max_overlap_fraction"], cfg["max_overlap_width"]))
    io.atomic_write_text(report_path, render_report(manifest, failures))
    warnings = tolerated(manifest, failures)
    for row in warnings.itertuples():
        log.warning("%s: tolerated: %s", row.image_path, row.problems)
    if failures:
        for failure in failures:
            for row in failure.rows:
                log.error("%s: broke '%s': %s", row["image_path"] or row["id"], failure.rule, row["problems"])
        raise ValidationFailed(f"{len(failures)} expectation(s) failed; see {report_path}")
    summary = {**summarize(manifest), "overlap_warnings": int(len(warnings)), "data_md5": data_md5()}
    io.write_csv(manifest_path, manifest)
    io.write_json(summary_path, summary)
    log.info("validation passed: %s", summary)
    return summary
