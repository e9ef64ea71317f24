"""The stage cost table's bookkeeping, on a hand-written py-spy profile."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("stage_costs", Path(__file__).parents[2] / "benchmarks" / "stage_costs.py")
stage_costs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_costs)

DVC = 'process 10:"/venv/bin/python /venv/bin/dvc repro"'
TRAIN = 'process 20:"/venv/bin/python /venv/bin/nucseg train"'
PROFILE = [
    f"{DVC};thread (10): MainThread;main (dvc/cli.py:1);run (subprocess.py:550);Popen.wait (subprocess.py:1264) 400\n",
    f"{DVC};thread (10): MainThread;main (dvc/cli.py:1);md5 (dvc_data/hashfile.py:9) 20\n",
    f"{DVC};{TRAIN};thread (20): MainThread;<module> (nucseg/cli.py:1);_find_and_load (<frozen importlib._bootstrap>:1) 40\n",
    f"{DVC};{TRAIN};thread (20): MainThread;run (nucseg/stages/train.py:5);fit (keras/src/backend/tensorflow/trainer.py:3) 200\n",
    f"{DVC};{TRAIN};thread (20): MainThread;run (nucseg/stages/train.py:9);log_model (mlflow/keras/save.py:2) 60\n",
    f"{DVC};{TRAIN};thread (20): MainThread;run (nucseg/stages/train.py:7);segment (nucseg/core/segment.py:1);"
    "predict_on_batch (nucseg/core/runtime.py:4) 50\n",
    f"{DVC};{TRAIN};thread (20): MainThread;run (nucseg/stages/train.py:7);labels_from_maps (nucseg/core/postprocess.py:3);"
    "watershed (skimage/segmentation/_watershed.py:2) 50\n",
    f"{DVC};{TRAIN};thread (21);_bootstrap (threading.py:1);__getitem__ (nucseg/core/data.py:131);"
    "sample_crop (nucseg/core/augment.py:60) 120\n",
    f"{DVC};{TRAIN};thread (22);_bootstrap (threading.py:1);wait (threading.py:320) 400\n",
]


def test_samples_are_charged_to_the_stage_and_to_the_first_matching_category():
    main, feeding = stage_costs.parse(PROFILE)
    assert main["train"] == {"start-up": 40, "network": 250, "MLflow": 60, "post-processing and scoring": 50}
    assert main["dvc and other processes"] == {"other": 20}  # its wait for the stage is the stage's time
    assert feeding == {"train": 120}  # a background thread's wait is no one's cost


def test_the_table_gives_minutes_at_the_sampling_rate_and_shares_of_the_stage():
    table = stage_costs.table(*stage_costs.parse(PROFILE), rate=20)
    train = next(row for row in table.splitlines() if row.startswith("| train |"))
    cells = [cell.strip() for cell in train.strip("|").split("|")]
    assert cells[1] == "0.3"  # 400 samples / 20 Hz = 20 s
    shares = dict(zip(stage_costs.COLUMNS, map(int, cells[2:-1])))
    assert shares == {"start-up": 10, "MLflow": 15, "data feeding": 0, "network": 62,
                      "post-processing and scoring": 12, "I/O": 0, "other": 0}
    assert cells[-1] == "0.1"  # 120 samples = 6 s
