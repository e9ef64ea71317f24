"""Stage `prepare`: instance labels, border targets, intensity normalisation, resizing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from nucseg import io
from nucseg.stages import prepare
from nucseg.core.preprocess import preprocess, resize_labels, working_size
from nucseg.core.targets import labels_from_masks, targets_from_labels, touching_gaps


def disk_mask(shape, center, radius) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[disk(center, radius, shape=shape)] = True
    return mask


# ---- labels_from_masks ----

def test_labels_from_masks_numbers_masks_in_order():
    shape = (12, 12)
    a, b, c = (np.zeros(shape, bool) for _ in range(3))
    a[1:3, 1:3] = True
    b[5:8, 5:8] = True
    c[10, 0:4] = True
    labels = labels_from_masks([a, b, c])
    assert labels.dtype == np.uint16 and labels.shape == shape
    expected = np.zeros(shape, np.uint16)
    expected[1:3, 1:3] = 1
    expected[5:8, 5:8] = 2
    expected[10, 0:4] = 3
    np.testing.assert_array_equal(labels, expected)


def test_labels_from_masks_goes_past_255():
    shape = (20, 20)
    masks = []
    for index in range(300):
        mask = np.zeros(shape, bool)
        mask.flat[index] = True
        masks.append(mask)
    labels = labels_from_masks(masks)
    assert labels.max() == 300
    assert labels.flat[299] == 300 and labels.flat[0] == 1 and labels.flat[300] == 0


def test_overlapping_pixels_go_to_the_smaller_mask_then_the_earlier():
    shape = (10, 10)
    big, small, twin = (np.zeros(shape, bool) for _ in range(3))
    big[0:6, 0:6] = True
    small[5:7, 5:7] = True  # shares pixel (5, 5) with big
    twin[5:7, 5:7] = True   # same size as small: the earlier of the two keeps the shared pixels
    labels = labels_from_masks([big, small, twin])
    assert labels[5, 5] == 2 and labels[6, 6] == 2 and labels[0, 0] == 1
    assert labels_from_masks([small, big])[5, 5] == 1  # order of files does not decide, size does


def test_labels_from_masks_rejects_empty_list():
    with pytest.raises(ValueError, match="no masks"):
        labels_from_masks([])


# ---- targets_from_labels ----

SHAPE = (41, 58)
CENTRE_ROW = 20


def touching_disks() -> np.ndarray:
    """Disk 1 at (20, 20) r=10 (row 20: cols 11..29), disk 2 at (20, 37) r=10 (row 20: cols 28..46);
    disk 2 is painted last, so on row 20 label 1 spans cols 11..27 and label 2 cols 28..46."""
    labels = np.zeros(SHAPE, np.uint16)
    labels[disk_mask(SHAPE, (CENTRE_ROW, 20), 10)] = 1
    labels[disk_mask(SHAPE, (CENTRE_ROW, 37), 10)] = 2
    return labels


def meeting_pixels(labels: np.ndarray) -> np.ndarray:
    """Pixels of one nucleus with a 4-neighbour in the other nucleus."""
    meet = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            neighbour = np.roll(labels, shift, axis=axis)
            meet |= (labels > 0) & (neighbour > 0) & (neighbour != labels)
    return meet


def test_touching_disks_fixture_is_what_the_expectations_assume():
    labels = touching_disks()
    row = labels[CENTRE_ROW]
    assert set(np.flatnonzero(row == 1)) == set(range(11, 28))
    assert set(np.flatnonzero(row == 2)) == set(range(28, 47))
    assert meeting_pixels(labels).sum() > 0


@pytest.mark.parametrize("border_width", [1, 2, 3])
def test_targets_foreground_border_and_dtype(border_width):
    labels = touching_disks()
    target = targets_from_labels(labels, "border", border_width)
    assert target.dtype == np.uint8 and target.shape == SHAPE + (2,)
    assert set(np.unique(target)) <= {0, 1}
    foreground, border = target[..., 0].astype(bool), target[..., 1].astype(bool)
    np.testing.assert_array_equal(foreground, labels > 0)  # the union of both disks
    assert not (border & ~foreground).any()  # border lies inside the foreground
    assert border[meeting_pixels(labels)].all()  # where the nuclei touch, the border is set
    # the centres are interior for every width used here
    assert border[CENTRE_ROW, 20] == 0 and border[CENTRE_ROW, 37] == 0


@pytest.mark.parametrize("border_width, ring_cols", [
    # row 20: left edge at col 11, the two nuclei meet between cols 27|28, right edge at col 46
    (1, [11, 27, 28, 46]),
    (3, [11, 12, 13, 25, 26, 27, 28, 29, 30, 44, 45, 46]),
])
def test_border_ring_thickness_on_the_centre_row(border_width, ring_cols):
    border = targets_from_labels(touching_disks(), "border", border_width)[..., 1]
    assert list(np.flatnonzero(border[CENTRE_ROW])) == ring_cols


@pytest.mark.parametrize("border_width", [1, 2, 3])
def test_border_is_exactly_the_pixels_within_width_of_a_boundary(border_width):
    """A pixel is border iff it is a nucleus pixel closer than `border_width` to the inner boundary."""
    from scipy.ndimage import distance_transform_edt

    labels = touching_disks()
    # inner boundary by hand: a nucleus pixel whose 4-neighbour has another label (background included)
    padded = np.pad(labels, 1)
    boundary = np.zeros(SHAPE, bool)
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        neighbour = padded[1 + dr:1 + dr + SHAPE[0], 1 + dc:1 + dc + SHAPE[1]]
        boundary |= (labels > 0) & (neighbour != labels)
    distance = distance_transform_edt(~boundary)
    expected = (labels > 0) & (distance <= border_width - 1)
    border = targets_from_labels(labels, "border", border_width)[..., 1].astype(bool)
    np.testing.assert_array_equal(border, expected)
    interior = (labels > 0) & (distance > border_width - 1)
    assert interior.any() and not border[interior].any()


def test_wider_border_is_a_thicker_ring():
    labels = touching_disks()
    thin = targets_from_labels(labels, "border", 1)[..., 1].astype(bool)
    thick = targets_from_labels(labels, "border", 3)[..., 1].astype(bool)
    assert (thin <= thick).all() and thick.sum() > 2 * thin.sum()
    np.testing.assert_array_equal(targets_from_labels(labels, "border", 1)[..., 0], targets_from_labels(labels, "border", 3)[..., 0])


def test_targets_of_an_empty_image_are_zero():
    target = targets_from_labels(np.zeros((8, 9), np.uint16), "border", 2)
    assert target.shape == (8, 9, 2) and not target.any()


# ---- intensity normalisation ----

def test_normalize_image_hand_computed():
    image = np.array([[0, 51], [102, 255]], np.uint8)
    out = io.normalize_image(image, 0.0, 100.0)
    # the docstring promises float32; under NumPy 2 the float64 percentiles promote it, so only "float" is checked
    assert np.issubdtype(out.dtype, np.floating) and out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[..., 0], [[0.0, 0.2], [0.4, 1.0]], atol=1e-6)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert not io.normalize_image(np.full((4, 4), 77, np.uint8)).any()  # flat image: zeros, no NaN


def grey_picture() -> np.ndarray:
    """A dim gradient background with a few bright nuclei of different brightness."""
    rows, cols = np.mgrid[0:48, 0:64]
    picture = 10 + 30 * cols / 63 + 10 * rows / 47
    for (r, c), radius, level in (((12, 15), 6, 200), ((30, 40), 8, 160), ((36, 12), 4, 240)):
        picture[disk_mask(picture.shape, (r, c), radius)] = level
    return np.round(picture).astype(np.uint8)


def same_picture_four_ways() -> dict[str, np.ndarray]:
    grey = grey_picture()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full(grey.shape + (1,), 255, np.uint8)], axis=2)
    return {"grey8": grey, "rgb8": rgb, "rgba8": rgba, "grey16": grey.astype(np.uint16) * 257}


def assert_all_normalise_alike(images: dict[str, np.ndarray]) -> None:
    reference = io.normalize_image(images["grey8"], 1.0, 99.8)
    assert reference.min() == 0.0 and reference.max() == 1.0
    for name, image in images.items():
        out = io.normalize_image(image, 1.0, 99.8)
        assert out.shape == reference.shape == (48, 64, 3), name
        np.testing.assert_allclose(out, reference, atol=1 / 255, err_msg=name)


def test_normalisation_is_the_same_for_grey_rgb_rgba_and_16_bit_in_memory():
    assert_all_normalise_alike(same_picture_four_ways())


def test_normalisation_is_the_same_after_a_round_trip_through_files(tmp_path):
    images = same_picture_four_ways()
    io.write_png(tmp_path / "grey8.png", images["grey8"])
    io.write_png(tmp_path / "rgb8.png", images["rgb8"])
    cv2.imwrite(str(tmp_path / "rgba8.png"), cv2.cvtColor(images["rgba8"], cv2.COLOR_RGBA2BGRA))
    io.write_png(tmp_path / "grey16.png", images["grey16"])
    tifffile.imwrite(tmp_path / "grey16.tif", images["grey16"])
    tifffile.imwrite(tmp_path / "rgb8.tif", images["rgb8"])

    read = {name: io.read_image(tmp_path / f"{name}.png") for name in images}
    for name, image in images.items():
        assert read[name].dtype == image.dtype and read[name].shape == image.shape, name
        np.testing.assert_array_equal(read[name], image, err_msg=name)
    assert_all_normalise_alike(read)

    tiff16 = io.read_image(tmp_path / "grey16.tif")
    assert tiff16.dtype == np.uint16 and tiff16.shape == (48, 64)
    assert_all_normalise_alike({**read, "grey16": tiff16, "rgb8": io.read_image(tmp_path / "rgb8.tif")})


# ---- resizing ----

def block_labels(height: int, width: int) -> np.ndarray:
    labels = np.zeros((height, width), np.uint16)
    labels[: height // 2, : width // 2] = 3
    labels[height // 2:, : width // 2] = 7
    labels[: height // 2, width // 2:] = 300
    return labels  # bottom-right quadrant stays background


@pytest.mark.parametrize("shape, longest, expected", [
    ((30, 60), 20, (10, 20)),    # landscape, downscale by 3
    ((60, 30), 20, (20, 10)),    # portrait
    ((25, 60), 20, (8, 20)),     # 25/3 = 8.33 -> 8
    ((30, 60), 120, (60, 120)),  # upscale by 2
])
def test_resize_rescales_longer_side(shape, longest, expected):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    labels = block_labels(*shape)
    assert working_size(*shape, longest) == expected
    new_image = preprocess(image, 0.0, 100.0, longest)
    new_labels = resize_labels(labels, *expected)
    assert new_image.shape == expected + (3,) and new_image.dtype == np.uint8
    assert new_labels.shape == expected and max(new_labels.shape) == longest
    assert new_labels.dtype == np.uint16  # nearest neighbour: still integer labels
    assert set(np.unique(new_labels)) == {0, 3, 7, 300}  # no label invented by interpolation, none lost


def test_resize_keeps_labels_of_small_nuclei_integer():
    labels = touching_disks()
    small = resize_labels(labels, *working_size(*SHAPE, 29))  # 58 -> 29
    assert small.shape == (20, 29)  # 41 / 2 = 20.5 rounds to even
    assert set(np.unique(small)) <= {0, 1, 2}


def test_preprocess_without_resize_is_the_normalised_image_in_8_bit_levels():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4096, (10, 12), dtype=np.uint16)
    out = preprocess(image, 1.0, 99.8)
    expected = np.round(io.normalize_image(image, 1.0, 99.8) * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)


def stained_field(background: tuple[int, int, int], nucleus: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    shape = (64, 64)
    mask = disk_mask(shape, (20, 20), 8) | disk_mask(shape, (44, 40), 10)
    image = np.empty(shape + (3,), np.uint8)
    image[:] = background
    image[mask] = nucleus
    return image, mask


@pytest.mark.parametrize("background, nucleus", [
    ((10, 10, 12), (40, 180, 60)),      # fluorescence: bright nuclei on black
    ((240, 225, 235), (90, 40, 140)),   # H&E: purple nuclei on a pale pink background
    ((245, 200, 220), (170, 120, 190)),  # a pale, pinker stain
])
def test_grey_input_shows_every_modality_as_bright_nuclei_on_a_dark_background(background, nucleus):
    image, mask = stained_field(background, nucleus)
    out = preprocess(image, 1.0, 99.8, input_form="grey", clahe_clip=2.0)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    assert out[mask].mean() > 150 and out[mask].mean() - out[~mask].mean() > 120


def test_the_clahe_grid_is_the_recipe_s_setting():
    image, _ = stained_field((10, 10, 12), (40, 180, 60))
    coarse, fine = (preprocess(image, 1.0, 99.8, input_form="grey", clahe_clip=2.0, clahe_grid=grid) for grid in (1, 8))
    assert not np.array_equal(coarse, fine)
    unequalised = preprocess(image, 1.0, 99.8, input_form="grey", clahe_clip=0.0, clahe_grid=1)
    np.testing.assert_array_equal(unequalised, preprocess(image, 1.0, 99.8, input_form="grey", clahe_clip=0.0))


def test_unknown_input_form_is_refused():
    with pytest.raises(ValueError, match="input_form"):
        preprocess(np.zeros((8, 8, 3), np.uint8), 1.0, 99.8, input_form="hsv")


def write_sample(root: Path, sample_id: str, image: np.ndarray, masks: list[np.ndarray]) -> Path:
    sample = root / sample_id
    io.write_png(sample / "images" / f"{sample_id}.png", image)
    for index, mask in enumerate(masks):
        io.write_png(sample / "masks" / f"m{index:02d}.png", mask.astype(np.uint8) * 255)
    return sample / "images" / f"{sample_id}.png"


def test_prepare_sample_with_resize(params, tmp_path):
    shape = (40, 80)
    masks = [disk_mask(shape, (20, 20), 10), disk_mask(shape, (20, 55), 12)]
    image = np.full(shape + (3,), 20, np.uint8)
    for mask in masks:
        image[mask] = 220
    image_path = write_sample(tmp_path, "s1", image, masks)
    cfg = {**params["prepare"], "resize": 40, "input_form": "rgb"}
    sample = prepare.prepare_sample(image_path, image_path.parent.parent / "masks", cfg)
    assert sample["image"].shape == (20, 40, 3) and sample["image"].dtype == np.uint8
    assert sample["labels"].shape == shape and sample["labels"].dtype == np.uint16  # truth as annotated
    assert set(np.unique(sample["labels"])) == {0, 1, 2}
    assert sample["target"].dtype == np.uint8
    working = resize_labels(sample["labels"], 20, 40)
    np.testing.assert_array_equal(sample["target"][..., 0], working > 0)
    # normalised to 0..255: nuclei 255, background 0 (area averaging blends only the rims)
    assert sample["image"][10, 10].tolist() == [255, 255, 255] and sample["image"][10, 27].tolist() == [255] * 3
    assert sample["image"][0, 0].tolist() == [0, 0, 0] and sample["image"][19, 39].tolist() == [0, 0, 0]
    assert sample["image"][working > 0].mean() > 200 and sample["image"][working == 0].mean() < 50


# ---- the whole stage on real images ----

def test_run_on_real_slice(params, real_slice, tmp_path):
    from nucseg.core.manifest import build_manifest

    manifest = build_manifest(real_slice)
    manifest_path = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    ids = list(manifest["id"])
    samples_dir = tmp_path / "prepared"
    summary_path = tmp_path / "reports" / "prepare_summary.json"
    params["prepare"].update(resize=0, border_width=2, separator="gap")
    summary = prepare.run(params, manifest_path=manifest_path, samples_dir=samples_dir, summary_path=summary_path)

    n_masks = {sid: len(list((real_slice / sid / "masks").glob("*.png"))) for sid in ids}
    assert sorted(p.stem for p in samples_dir.glob("*.npz")) == sorted(ids)
    for sid in ids:
        with np.load(samples_dir / f"{sid}.npz") as npz:
            assert set(npz.files) == {"image", "labels", "target"}
            image, labels, target = npz["image"], npz["labels"], npz["target"]
        height, width = io.read_image(real_slice / sid / "images" / f"{sid}.png").shape[:2]
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        assert labels.dtype == np.uint16 and labels.shape == (height, width)
        assert int(labels.max()) == n_masks[sid]
        assert len(np.unique(labels)) == n_masks[sid] + 1  # every mask survives, plus background
        assert target.dtype == np.uint8 and target.shape == (height, width, 2)
        np.testing.assert_array_equal(target[..., 0], labels > 0)
        np.testing.assert_array_equal(target[..., 1], touching_gaps(labels, params["prepare"]["gap_radius_fraction"]))

    on_disk = json.loads(summary_path.read_text())
    assert on_disk == summary
    assert summary["images"] == 4 and summary["nuclei"] == sum(n_masks.values())
    assert 0 < summary["mean_separator_fraction"] < 1


def test_run_skips_test_images(params, real_slice, tmp_path):
    """Only training rows are prepared (test images have no masks)."""
    from nucseg.core.manifest import build_manifest

    manifest = build_manifest(real_slice)
    manifest.loc[manifest.index[-1], "split"] = "test"
    manifest.to_csv(tmp_path / "manifest.csv", index=False)
    ids = list(manifest["id"])
    prepare.run(params, manifest_path=tmp_path / "manifest.csv", samples_dir=tmp_path / "prepared",
                summary_path=tmp_path / "summary.json")
    assert sorted(p.stem for p in (tmp_path / "prepared").glob("*.npz")) == sorted(ids[:-1])
