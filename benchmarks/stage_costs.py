"""Where a pipeline run's time goes: wall minutes per stage and the share of each stage's main
thread spent in the network, data feeding, post-processing and scoring, MLflow, file I/O and
start-up (imports).

It samples the run's Python stacks with py-spy (a sampling profiler outside the process: the
stages run unchanged, at their own speed) and sorts each sample of a stage's main thread by the
frames on its stack. The main thread is the stage's clock: while the network runs in TensorFlow's
or ONNX Runtime's own threads, the main thread waits inside the network call, so that wait is
charged to the network. Training feeds crops from a background thread while the network runs; its
busy time is reported beside the main thread's ("data feeding, background"), as minutes.

Run from the project root:
    python benchmarks/stage_costs.py record -- dvc repro     # profile a run, then print its table
    python benchmarks/stage_costs.py table stage_costs.raw   # the table of a recorded run
Prints numbers; asserts nothing. Quote it with `benchmarks/machine_reference.py`'s figure.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

RATE = 20  # samples per second: coarse, so the profiler costs the stages nothing measurable

# A sample goes to the first category one of whose patterns is in one of its frames' files or names.
CATEGORIES = (
    ("start-up", ("_find_and_load",)),
    ("MLflow", ("mlflow/",)),
    ("data feeding", ("nucseg/core/augment.py", "nucseg/core/data.py", "trainers/data_adapters/")),
    ("network", ("onnxruntime/", "tensorflow/", "keras/src/backend/tensorflow/trainer.py", "predict_on_batch")),
    ("post-processing and scoring", ("nucseg/core/postprocess.py", "nucseg/core/scale.py", "nucseg/core/metrics.py",
                                     "nucseg/core/calibration.py", "skimage/", "scipy/")),
    ("I/O", ("nucseg/io.py", "npyio", "imageio/", "tifffile", "PIL/", "zipfile", "pandas/io/")),
)
COLUMNS = [name for name, _ in CATEGORIES] + ["other"]
BACKGROUND_FEEDING = ("nucseg/core/augment.py", "nucseg/core/data.py")

_PROCESS = re.compile(r'^process (\d+):"(.*)"$')
_THREAD = re.compile(r"^thread \((\d+)\)")
_STAGE = re.compile(r"\bnucseg (\w+)")


def category(frames: list[str]) -> str:
    for name, patterns in CATEGORIES:
        if any(pattern in frame for frame in frames for pattern in patterns):
            return name
    return "other"


def parse(lines) -> tuple[dict[str, Counter], dict[str, int]]:
    """(main-thread samples per stage per category, background data-feeding samples per stage)
    from py-spy's raw output recorded with `--threads --subprocesses --idle`."""
    main: dict[str, Counter] = defaultdict(Counter)
    feeding: dict[str, int] = defaultdict(int)
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack:
            continue
        parts = stack.split(";")
        processes = [(k, _PROCESS.match(part)) for k, part in enumerate(parts) if _PROCESS.match(part)]
        if not processes:
            continue
        position, innermost = processes[-1]
        stage_name = _STAGE.search(innermost.group(2))
        stage = stage_name.group(1) if stage_name else "dvc and other processes"
        thread = _THREAD.match(parts[position + 1]) if position + 1 < len(parts) else None
        frames = parts[position + 2:]
        if not stage_name and any("subprocess.py" in frame for frame in frames):
            continue  # dvc waiting for a stage: the stage's own samples count that time
        if thread and thread.group(1) == innermost.group(1):  # the main thread's id is the process id
            main[stage][category(frames)] += int(count)
        elif any(pattern in frame for frame in frames for pattern in BACKGROUND_FEEDING):
            feeding[stage] += int(count)
    return main, feeding


def table(main: dict[str, Counter], feeding: dict[str, int], rate: int = RATE) -> str:
    header = ["stage", "wall min", *[f"{name} %" for name in COLUMNS], "data feeding, background min"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    totals: Counter = Counter()
    for stage, counts in main.items():
        samples = sum(counts.values())
        totals += counts
        shares = [f"{100 * counts[name] / samples:.0f}" for name in COLUMNS]
        rows.append(f"| {stage} | {samples / rate / 60:.1f} | " + " | ".join(shares)
                    + f" | {feeding.get(stage, 0) / rate / 60:.1f} |")
    samples = sum(totals.values()) or 1
    rows.append(f"| all | {samples / rate / 60:.1f} | " + " | ".join(f"{100 * totals[name] / samples:.0f}" for name in COLUMNS)
                + f" | {sum(feeding.values()) / rate / 60:.1f} |")
    return "\n".join(rows)


def record(command: list[str], output: Path) -> int:
    return subprocess.call(["py-spy", "record", "--idle", "--threads", "--subprocesses", "--nonblocking",
                            "-r", str(RATE), "-f", "raw", "-o", str(output), "--", *command])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("record", help="profile a command (e.g. dvc repro), then print its table")
    run.add_argument("--output", type=Path, default=Path("stage_costs.raw"))
    run.add_argument("command", nargs=argparse.REMAINDER)
    show = sub.add_parser("table", help="print the table of a recorded profile")
    show.add_argument("profile", type=Path)
    args = parser.parse_args()
    if args.action == "record":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("record needs a command, e.g. `record -- dvc repro`")
        code = record(command, args.output)
        if code != 0:
            sys.exit(f"stage_costs: `{' '.join(command)}` exited with {code}; the profile is {args.output}")
        profile = args.output
    else:
        profile = args.profile
    if not profile.is_file():
        sys.exit(f"stage_costs: no profile at {profile}")
    with profile.open() as lines:
        print(table(*parse(lines)))


if __name__ == "__main__":
    main()
