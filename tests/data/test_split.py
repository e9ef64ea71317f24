"""Stage `split`: tiles of one picture share a group and a split; groups are split by modality."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk
from skimage.filters import gaussian

from nucseg import io
from nucseg.core import tiles
from nucseg.stages import split


def picture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A uint8 fluorescence-like picture: uneven background and bright disks, some cut by any seam,
    blurred as a microscope's optics blur (so neighbouring pixel lines are alike), plus sensor noise."""
    image = gaussian(rng.normal(0, 1, (height, width)), 6) * 400 + 30
    for _ in range(height * width // 400):
        rr, cc = disk(tuple(rng.integers(0, (height, width))), int(rng.integers(4, 9)), shape=(height, width))
        image[rr, cc] += rng.uniform(80, 150)
    image = gaussian(image, 1.5, preserve_range=True) + rng.normal(0, 1, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def mosaic(seed: int = 0) -> dict[str, np.ndarray]:
    """One 128x128 picture cut into 4 tiles, plus 6 unrelated 64x64 pictures."""
    rng = np.random.default_rng(seed)
    whole = picture(rng, 128, 128)
    images = {"tile_tl": whole[:64, :64], "tile_tr": whole[:64, 64:], "tile_bl": whole[64:, :64],
              "tile_br": whole[64:, 64:]}
    images.update({f"other{k}": picture(rng, 64, 64) for k in range(6)})
    return images


def groups_of(images: dict[str, np.ndarray]) -> dict[str, str]:
    greys = {k: tiles.grey_for_seams(v) for k, v in images.items()}
    return tiles.group_ids(sorted(images), tiles.find_links(greys))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_four_tiles_of_one_picture_share_a_group(seed):
    groups = groups_of(mosaic(seed))
    assert {groups[t] for t in ("tile_tl", "tile_tr", "tile_bl", "tile_br")} == {"tile_bl"}  # smallest id names it
    others = [groups[f"other{k}"] for k in range(6)]
    assert others == [f"other{k}" for k in range(6)]  # each unrelated picture alone


def test_links_say_which_side():
    links = tiles.find_links({k: tiles.grey_for_seams(v) for k, v in mosaic().items()})
    assert {(l.a, l.b, l.side) for l in links} == {
        ("tile_tl", "tile_tr", "right"), ("tile_bl", "tile_br", "right"),
        ("tile_tl", "tile_bl", "bottom"), ("tile_tr", "tile_br", "bottom")}
    assert all(l.smoothness <= 1.5 and l.correlation >= 0.3 for l in links)


def test_dark_empty_edges_do_not_link():
    """Black backgrounds with sensor noise look alike at every edge; nothing continues across them."""
    rng = np.random.default_rng(3)
    images = {f"dark{k}": np.clip(rng.normal(8, 2, (64, 64)), 0, 255).astype(np.uint8) for k in range(8)}
    assert tiles.find_links({k: tiles.grey_for_seams(v) for k, v in images.items()}) == []


def test_sixteen_bit_tiles_link_like_eight_bit():
    images = {k: v.astype(np.uint16) * 257 for k, v in mosaic().items()}
    assert len(set(groups_of(images).values())) == 7


# ---- assign_splits ----

def table(groups: dict[str, tuple[str, int]]) -> pd.DataFrame:
    """Rows of images from {group: (modality, size)}."""
    rows = [(f"{g}_{k}", g, modality) for g, (modality, size) in groups.items() for k in range(size)]
    return pd.DataFrame(rows, columns=["id", "group", "modality"])


FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}


def many_groups() -> pd.DataFrame:
    spec = {f"f{k}": ("fluorescence", 4 if k % 3 == 0 else 1) for k in range(30)}
    spec.update({f"h{k}": ("histology", 4 if k % 2 else 1) for k in range(10)})
    spec.update({f"b{k}": ("brightfield", 1) for k in range(7)})
    return table(spec)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_groups_never_span_two_splits(seed):
    frame = many_groups()
    frame["split"] = split.assign_splits(frame, FRACTIONS, seed)
    assert (frame.groupby("group")["split"].nunique() == 1).all()
    assert set(frame["split"]) == {"train", "val", "test"}


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_split_is_stratified_by_modality_near_the_fractions(seed):
    frame = many_groups()
    frame["split"] = split.assign_splits(frame, FRACTIONS, seed)
    for modality, part in frame.groupby("modality"):
        shares = part["split"].value_counts(normalize=True)
        for name, fraction in FRACTIONS.items():
            assert abs(shares.get(name, 0) - fraction) <= 4 / len(part), (modality, name, shares.to_dict())
        assert shares.get("val", 0) > 0 and shares.get("test", 0) > 0, modality


def test_split_depends_on_the_seed_only():
    frame = many_groups()
    first = split.assign_splits(frame, FRACTIONS, 7)
    shuffled = frame.sample(frac=1, random_state=0)
    again = split.assign_splits(shuffled, FRACTIONS, 7)
    assert first.to_dict() == again.reindex(first.index).to_dict()  # row order does not matter
    assert any(not first.equals(split.assign_splits(frame, FRACTIONS, s)) for s in range(1, 5))


def test_fractions_must_leave_training_data():
    with pytest.raises(ValueError, match="leave some data for training"):
        split.fractions_from_params({"val_fraction": 0.5, "test_fraction": 0.5})


# ---- the stage on a mosaic written to disk ----

def test_run_writes_split_with_groups(params, tmp_path):
    rows = []
    for image_id, image in mosaic().items():
        path = tmp_path / "stage1_train" / image_id / "images" / f"{image_id}.png"
        io.write_png(path, image)
        rows.append({"id": image_id, "split": "train", "image_path": str(path), "height": image.shape[0],
                     "width": image.shape[1]})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    pd.DataFrame({"id": [r["id"] for r in rows], "modality": "fluorescence"}).to_csv(tmp_path / "modality.csv",
                                                                                     index=False)
    params["split"].update(val_fraction=0.2, test_fraction=0.2, seed=0)
    summary = split.run(params, manifest_path=tmp_path / "manifest.csv", modality_path=tmp_path / "modality.csv",
                        split_path=tmp_path / "split.csv", links_path=tmp_path / "links.csv",
                        summary_path=tmp_path / "summary.json")
    result = pd.read_csv(tmp_path / "split.csv")
    assert list(result.columns[:4]) == ["id", "group", "split", "modality"]
    tile_rows = result[result["id"].str.startswith("tile")]
    assert tile_rows["group"].nunique() == 1 and tile_rows["split"].nunique() == 1
    assert summary["groups"] == 7 and summary["tiled_groups"] == 1 and summary["images_in_tiled_groups"] == 4
    assert sum(summary["images_per_split"].values()) == 10
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert len(pd.read_csv(tmp_path / "links.csv")) == 4
