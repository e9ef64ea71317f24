"""Which images are tiles cut from one larger picture.

Many DSB2018 training images are tiles of a bigger picture. Split at random, sibling tiles land
on both sides and validation rewards memorising the picture. Two tiles are neighbours when the
seam between them is as smooth as the inside of each tile and the fine structure along it (the
nuclei it cuts through) continues across it. Neighbours are joined into groups, and the split
keeps each group on one side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter1d
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# (side of tile a, side of tile b that would touch it, axis whose length both must share)
SEAMS = (("right", "left", 0), ("bottom", "top", 1))


@dataclass(frozen=True)
class Link:
    """`b` continues `a` across a's `side` (right: b sits to the right of a; bottom: below it)."""

    a: str
    b: str
    side: str
    smoothness: float  # seam step / the tiles' own step between their outer two lines; ~1 at a true seam
    correlation: float  # of the fine structure along both edges


def grey_for_seams(image: np.ndarray) -> np.ndarray:
    """float32 HxW on an 8-bit scale: the raw intensities (not per-image normalised, which would
    give sibling tiles different scales)."""
    grey = image[..., :3].mean(axis=-1) if image.ndim == 3 else image
    return grey.astype(np.float32) / (257.0 if image.dtype == np.uint16 else 1.0)


def _edge(grey: np.ndarray, side: str, depth: int = 0) -> np.ndarray:
    return {"right": grey[:, -1 - depth], "left": grey[:, depth],
            "bottom": grey[-1 - depth], "top": grey[depth]}[side]


def _fine_structure(edges: np.ndarray, window: int) -> np.ndarray:
    """Edges minus their running mean, unit length: what is left are the nuclei and texture, not
    the illumination profile that many unrelated images share."""
    detail = edges - uniform_filter1d(edges, window, axis=-1)
    detail -= detail.mean(axis=-1, keepdims=True)
    return detail / np.maximum(np.linalg.norm(detail, axis=-1, keepdims=True), 1e-6)


def find_links(greys: Mapping[str, np.ndarray], *, min_correlation: float = 0.3, max_smoothness: float = 1.5,
               window: int = 9) -> list[Link]:
    """Mutually best seam matches between images of equal edge length."""
    links = []
    for side_a, side_b, axis in SEAMS:
        by_length: dict[int, list[str]] = {}
        for image_id, grey in greys.items():
            if min(grey.shape) >= 2:
                by_length.setdefault(grey.shape[axis], []).append(image_id)
        for members in by_length.values():
            if len(members) > 1:
                links += _match(members, greys, side_a, side_b, min_correlation, max_smoothness, window)
    return links


def _match(members: Sequence[str], greys: Mapping[str, np.ndarray], side_a: str, side_b: str,
           min_correlation: float, max_smoothness: float, window: int) -> list[Link]:
    a_edge = np.stack([_edge(greys[m], side_a) for m in members])
    a_inner = np.stack([_edge(greys[m], side_a, 1) for m in members])
    b_edge = np.stack([_edge(greys[m], side_b) for m in members])
    b_inner = np.stack([_edge(greys[m], side_b, 1) for m in members])
    correlation = _fine_structure(a_edge, window) @ _fine_structure(b_edge, window).T
    np.fill_diagonal(correlation, -np.inf)  # an image is not its own neighbour
    step = np.abs(a_edge[:, None, :] - b_edge[None, :, :]).mean(axis=-1)
    own_step = (np.abs(a_edge - a_inner).mean(axis=-1)[:, None] + np.abs(b_edge - b_inner).mean(axis=-1)[None, :]) / 2
    smoothness = step / (own_step + 0.5)  # + half a grey level: flat, noiseless edges do not divide by ~0
    # unrelated noise correlates by chance ~1/sqrt(length); 4 of those is no chance on short edges
    significant = max(min_correlation, 4 / np.sqrt(a_edge.shape[1]))
    links = []
    for i in range(len(members)):
        j = int(np.argmax(correlation[i]))
        if (int(np.argmax(correlation[:, j])) == i and correlation[i, j] >= significant
                and smoothness[i, j] <= max_smoothness):
            links.append(Link(members[i], members[j], side_a, round(float(smoothness[i, j]), 4),
                              round(float(correlation[i, j]), 4)))
    return links


def group_ids(ids: Sequence[str], links: Sequence[Link]) -> dict[str, str]:
    """Every id's group: the connected components of the links, each named by its smallest id
    (stable under reordering, and readable)."""
    index = {image_id: k for k, image_id in enumerate(ids)}
    rows = [index[link.a] for link in links]
    cols = [index[link.b] for link in links]
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(ids)))
    _, component = connected_components(graph, directed=False)
    names: dict[int, str] = {}
    for image_id, comp in zip(ids, component):
        names[comp] = min(names.get(comp, image_id), image_id)
    return {image_id: names[comp] for image_id, comp in zip(ids, component)}
