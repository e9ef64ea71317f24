"""One resume policy for every resumable step (an interrupted `train`, a saved `tune` search).

A step saves, beside its progress, the settings its result depends on: the params it shares,
the raw data version, the rows of the split it reads, and the code it runs. A rerun resumes only
under equal settings; otherwise it starts afresh and says which of them changed, since progress
made on other data, params or code would silently mix two different runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

PACKAGE = Path(__file__).resolve().parents[1]


def package_code(*extra: str | Path) -> list[Path]:
    """The source files a trained model depends on: the array code, the config, and `extra`."""
    return sorted(PACKAGE.glob("core/*.py")) + [PACKAGE / "config.py", *(Path(path).resolve() for path in extra)]


def code_digest(files: Iterable[Path]) -> str:
    """sha256 over the names and contents of `files`: changes when any of them does."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def split_digest(split_path: str | Path, sides: tuple[str, ...]) -> str:
    """sha256 of the split's rows on `sides`: which images, in which modality."""
    split = pd.read_csv(split_path)
    return hashlib.sha256(split[split["split"].isin(sides)].to_csv(index=False).encode()).hexdigest()


def settings(params: dict[str, Any], data_md5: str, split_path: str | Path, sides: tuple[str, ...],
             code: Iterable[Path]) -> dict[str, Any]:
    """What a step's saved progress depends on, in JSON form (`params`: the sections, or the
    parts of them, that change its result)."""
    return json.loads(json.dumps({"params": params, "data_md5": data_md5, "split": split_digest(split_path, sides),
                                  "code": code_digest(code)}, default=str))


def changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The names of what differs between two `settings` (params by section), sorted."""
    def flat(value: dict[str, Any]) -> dict[str, Any]:
        out = {key: item for key, item in value.items() if key != "params"}
        out.update({f"params.{section}": item for section, item in (value.get("params") or {}).items()})
        return out

    old, new = flat(saved), flat(current)
    return sorted(key for key in {*old, *new} if old.get(key) != new.get(key))


def digest(value: dict[str, Any]) -> str:
    """A short name for `settings`, for tags that must match across processes."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
