"""Which model a URI names: registry URIs parsed, other URIs passed through, and the champion
of a promotion report (or a clear error when there is none)."""

from __future__ import annotations

import json

import pytest

from nucseg.mlops.model_uris import CHAMPION_URI, _parse_models_uri, promoted_model_uri


@pytest.mark.parametrize("uri, parsed", [
    ("models:/nucseg-unet@champion", ("nucseg-unet", "champion", "")),
    ("models:/nucseg-unet/3", ("nucseg-unet", "", "3")),
    ("models:/nucseg-unet/latest", ("", "", "")),  # names no fixed version
    ("models:/m-0123456789abcdef", ("", "", "")),  # a logged model
    ("runs:/abc/segmenter", ("", "", "")),
    ("/some/path/segmenter", ("", "", "")),
])
def test_registry_uris_are_parsed_and_others_left_alone(uri, parsed):
    assert _parse_models_uri(uri) == parsed


def test_the_champion_uri_is_the_registered_models_alias():
    assert _parse_models_uri(CHAMPION_URI) == ("nucseg-unet", "champion", "")


def test_a_promotion_report_names_its_champion_version_or_says_what_is_wrong(tmp_path):
    report = tmp_path / "promotion.json"
    report.write_text(json.dumps({"champion_version": 4}))
    assert promoted_model_uri(report) == "models:/nucseg-unet/4"
    with pytest.raises(FileNotFoundError, match="not found; run `dvc repro promote` first"):
        promoted_model_uri(tmp_path / "missing.json")
    report.write_text(json.dumps({"champion": "untuned"}))
    with pytest.raises(ValueError, match="expected a promotion report with champion_version"):
        promoted_model_uri(report)
