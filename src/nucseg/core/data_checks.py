"""The data's checks, as a Great Expectations suite over the manifest (`core.manifest`): kept
here as code so it is reviewed and versioned like the rest, with what a person reads when one
fails (`render_report`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pandas as pd

logging.getLogger("great_expectations").setLevel(logging.WARNING)


def expectation_suite(min_side: int = 16, max_mask_coverage: float = 0.95, max_overlap_fraction: float = 0.05,
                      max_overlap_width: int = 2) -> list:
    """The expectations every image must meet; `meta.meaning` is what a person reads on failure.

    Overlapping masks are tolerated where they only graze: data v2's corrected annotations
    overlap on 1-2 pixels in six images, which `prepare` resolves. An overlap wider than
    `max_overlap_width` pixels (a duplicated or shifted mask) or covering more than
    `max_overlap_fraction` of an image's nucleus pixels still fails. The tolerated cases are
    listed as warnings in the report.
    """
    import great_expectations as gx

    E = gx.expectations

    def rule(expectation_class, meaning: str, **kwargs):
        return expectation_class(meta={"meaning": meaning}, **kwargs)

    return [
        rule(E.ExpectColumnValuesToBeUnique, "image ids are unique", column="id"),
        rule(E.ExpectColumnValuesToBeBetween, "every image and mask file can be decoded as a 2-D or 3-D image",
             column="unreadable_files", min_value=0, max_value=0),
        rule(E.ExpectColumnValuesToBeInSet, "every training image has a masks folder with at least one mask",
             column="missing_masks", value_set=[False]),
        rule(E.ExpectColumnValuesToBeBetween, "every mask has the size of its image",
             column="wrong_size_masks", min_value=0, max_value=0),
        rule(E.ExpectColumnValuesToBeBetween, "no mask is all zero", column="empty_masks", min_value=0, max_value=0),
        rule(E.ExpectColumnValuesToBeBetween,
             f"masks of one image overlap on at most {max_overlap_fraction:.2%} of its nucleus pixels",
             column="overlap_fraction", min_value=0.0, max_value=max_overlap_fraction),
        rule(E.ExpectColumnValuesToBeBetween, f"overlapping masks only graze (at most {max_overlap_width} px wide)",
             column="overlap_width", min_value=0, max_value=max_overlap_width),
        rule(E.ExpectColumnValuesToBeBetween, f"images are at least {min_side} pixels high",
             column="height", min_value=min_side),
        rule(E.ExpectColumnValuesToBeBetween, f"images are at least {min_side} pixels wide",
             column="width", min_value=min_side),
        rule(E.ExpectColumnValuesToBeInSet, "images are grey, RGB or RGBA", column="channels", value_set=[1, 3, 4]),
        rule(E.ExpectColumnValuesToBeInSet, "images are 8- or 16-bit", column="dtype", value_set=["uint8", "uint16"]),
        rule(E.ExpectColumnValuesToBeBetween, f"nuclei cover at most {max_mask_coverage:.0%} of an image",
             column="mask_coverage", min_value=0.0, max_value=max_mask_coverage),
    ]


@dataclass
class Failure:
    rule: str
    expectation: str
    rows: list[dict[str, Any]]


def run_suite(manifest: pd.DataFrame, expectations: list) -> list[Failure]:
    """Validate the manifest with Great Expectations; one Failure per broken expectation."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (context.data_sources.add_pandas("dsb")
                        .add_dataframe_asset("manifest")
                        .add_batch_definition_whole_dataframe("manifest"))
    suite = context.suites.add(gx.ExpectationSuite(name="dsb_manifest"))
    for expectation in expectations:
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": manifest})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE",
                                                  "unexpected_index_column_names": ["id"]})
    failures = []
    for res in result.results:
        if res.success:
            continue
        config = res.expectation_config
        ids = [entry["id"] for entry in res.result.get("unexpected_index_list") or []]
        rows = manifest[manifest["id"].isin(ids)][["id", "split", "image_path", "problems",
                                                  config.kwargs.get("column", "id")]]
        failures.append(Failure(rule=config.meta["meaning"], expectation=_describe(config),
                                rows=rows.loc[:, ~rows.columns.duplicated()].to_dict("records")))
    return failures


def _describe(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    return f"{config.type}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"


def tolerated(manifest: pd.DataFrame, failures: list[Failure]) -> pd.DataFrame:
    """Images whose masks overlap within the tolerance: they pass, with a warning."""
    failed = {row["id"] for failure in failures for row in failure.rows}
    return manifest[(manifest["overlap_pixels"] > 0) & ~manifest["id"].isin(failed)]


def render_report(manifest: pd.DataFrame, failures: list[Failure]) -> str:
    lines = ["# Data validation report", ""]
    lines.append(f"{len(manifest)} images checked with {len(expectation_suite())} expectations "
                 f"(Great Expectations suite `dsb_manifest`).")
    lines.append("")
    warnings = tolerated(manifest, failures)
    if not failures:
        lines.append("**PASSED**: every expectation holds" + (f", {len(warnings)} image(s) with warnings."
                                                              if len(warnings) else "."))
    if len(warnings):
        lines += ["", "## Warnings: masks overlap within the tolerance",
                  "`prepare` gives each pixel claimed twice to the smaller nucleus.", ""]
        lines += [f"- `{row.image_path}` ({row.split}): {row.problems}" for row in warnings.itertuples()]
    if not failures:
        return "\n".join(lines) + "\n"
    lines.append("")
    bad = sorted({row["id"] for f in failures for row in f.rows})
    lines.append(f"**FAILED**: {len(failures)} expectation(s) broken by {len(bad)} image(s).")
    for failure in failures:
        lines += ["", f"## Broken: {failure.rule}", f"`{failure.expectation}`", ""]
        for row in failure.rows:
            where = row["image_path"] or row["id"]
            lines.append(f"- `{where}` ({row['split']}): {row['problems'] or 'value out of range'}")
    return "\n".join(lines) + "\n"


def summarize(manifest: pd.DataFrame) -> dict[str, Any]:
    sizes = (manifest["height"].astype(str) + "x" + manifest["width"].astype(str)).value_counts()
    return {
        "images": {split: int(n) for split, n in manifest["split"].value_counts().items()},
        "masks": int(manifest["n_masks"].sum()),
        "grey_images": {split: int((part["colour"] == "grey").sum()) for split, part in manifest.groupby("split")},
        "colour_images": {split: int((part["colour"] == "colour").sum()) for split, part in manifest.groupby("split")},
        "distinct_sizes": int(len(sizes)),
        "sizes": {size: int(n) for size, n in sizes.head(8).items()},
        "min_side": int(manifest[["height", "width"]].min().min()),
        "max_side": int(manifest[["height", "width"]].max().max()),
    }
