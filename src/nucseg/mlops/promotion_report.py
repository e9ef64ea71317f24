"""What a promotion decided, as the DVC metrics file (`reports/promotion.json`) and the table a
reviewer reads (`reports/promotion.md`): each candidate's scores, the gate's verdicts, who holds
which alias and why, and the champion's quality levels."""

from __future__ import annotations

from typing import Any, Mapping

from nucseg.mlops.registry import CHALLENGER, CHAMPION, Candidate, Decision, Incumbent


def promotion_table(scored: list[Candidate], versions: dict[str, int], decision: Decision,
                    incumbent: Incumbent | None, verdict: dict[str, str],
                    quality: Mapping[str, dict[str, dict[str, float]]] | None = None) -> dict[str, Any]:
    """The DVC metrics file: one entry per candidate (the new champion with its quality levels),
    plus who holds which alias and why."""
    table = {"candidates": {c.name: {
        "version": versions[c.name], "run_id": c.run_id, "model_uri": c.model_uri, "loss": c.val_loss,
        **{key: c.summary["overall"][key] for key in ("dsb", "pixel_iou", "pixel_dice")},
        "dsb_per_modality": {m: v["dsb"] for m, v in c.summary["per_modality"].items()},
        "dsb_shifted": {shift: v["dsb"] for shift, v in c.summary.get("shifted", {}).items()},
        "nucleus_diameter": c.recipe.nucleus_diameter, "gate": verdict.get(c.name, ""),
        **({"quality": quality[c.name]} if c.name in (quality or {}) else {})} for c in scored},
        CHAMPION: decision.champion, "champion_version": versions[decision.champion],
        CHALLENGER: decision.challenger,
        "challenger_version": versions[decision.challenger] if decision.challenger else None,
        "reason": decision.reason}
    if incumbent and incumbent.label not in table["candidates"]:
        table["previous_champion"] = {"label": incumbent.label, "version": incumbent.version, "dsb": incumbent.dsb}
    return table


def promotion_markdown(table: dict[str, Any]) -> str:
    """The tuned-vs-untuned table a reviewer reads, with the decision under it."""
    candidates = table["candidates"]
    modalities = sorted({m for c in candidates.values() for m in c["dsb_per_modality"]})
    shifts = list(dict.fromkeys(s for c in candidates.values() for s in c.get("dsb_shifted", {})))
    would = "" if table.get("aliases_moved", True) else "would be "
    aliases = {table["champion_version"]: would + CHAMPION, table["challenger_version"]: would + CHALLENGER}
    header = ["candidate", "version", "alias", "val loss", "DSB", "pixel IoU", "Dice", *(f"DSB {m}" for m in modalities),
              *(f"DSB {s}" for s in shifts)]
    rows = [[name, c["version"], aliases.get(c["version"], ""), _fmt(c["loss"]), _fmt(c["dsb"]), _fmt(c["pixel_iou"]),
             _fmt(c["pixel_dice"]), *(_fmt(c["dsb_per_modality"].get(m)) for m in modalities),
             *(_fmt(c.get("dsb_shifted", {}).get(s)) for s in shifts)]
            for name, c in candidates.items()]
    if "previous_champion" in table:
        prev = table["previous_champion"]
        rows.append([f"{prev['label']} (champion before)", prev["version"], aliases.get(prev["version"], ""), "–",
                     _fmt(prev["dsb"]), "–", "–", *("–" for _ in [*modalities, *shifts])])
    outcome = (f"**Champion:** {_who(table['champion'], table['champion_version'])}; "
               f"**challenger:** {_who(table['challenger'], table['challenger_version'])}.")
    if not table.get("aliases_moved", True):
        lead = (f"DVC experiment `{table['dvc_experiment']}`: no alias moved." if "dvc_experiment" in table else
                f"No alias moved: {table['aliases_refused']}. A promoter moves them with `nucseg promote`.")
        outcome = (f"{lead} It would make {_who(table['champion'], table['champion_version'])} "
                   f"champion and {_who(table['challenger'], table['challenger_version'])} challenger.")
    gates = [f"- {name}: {c['gate']}" for name, c in candidates.items() if c.get("gate")]
    levels = [[name, level, _fmt(m["dsb"]), f"{m['megapixels_per_second']:.2f}"]
              for name, c in candidates.items() for level, m in c.get("quality", {}).items()]
    lines = ["# Promotion: tuned vs untuned", "", "Scored on the `test` split, which chose nothing before this, and on "
             "its shifted copies (`x2`: magnified twice, ...).", "",
             _row(header), _row(["---"] * len(header)), *map(_row, rows), "", outcome, "",
             f"**Why:** {table['reason']}.", "", *(["**Gate** (no modality or shifted copy may lose more than "
                                                  "`promote.max_loss`):", *gates, ""] if gates else []),
             *(["**Quality levels** (`nucseg score --quality`; speed: segmenting `test` in one process "
                "on the machine that ran this):", "", _row(["model", "quality", "DSB", "megapixels/s"]),
                _row(["---"] * 4), *map(_row, levels), ""] if levels else [])]
    return "\n".join(lines)


def _who(label: str | None, version: int | None) -> str:
    return "none" if label is None else label if label == f"version {version}" else f"{label} (version {version})"


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"
