"""`pedseg reproduce` end to end on a few cells (tiny preset): identical splits, the federated `shared` peer
baseline on Flower's simulation engine, the report files, resuming, and refusing other settings."""

import json

import pytest
import torch

from pedseg.cli import main as pedseg
from pedseg_core.config import PRESETS
from pedseg_core.errors import PedsegError
from pedseg_core.model.checkpoint import load_checkpoint
from pedseg_core.model.partition import split_for_scheme
from simulations.reproduce import CELLS, fold_config, reproduce, require_sites_split, select_cells

# one federated cell (each costs a Flower simulation's ~30 s start); `make reproduce` runs all 13
CELL_NAMES = ["centralized-individual", "centralized-full", "federated-shared-fedavg"]
SETTINGS = ["train.epochs=2", "train.steps_per_epoch=2", "prior.steps_per_epoch=3"]


def test_the_table_has_thirteen_cells():
    assert len(CELLS) == 13 and len({c.name for c in CELLS}) == 13
    assert [c.name for c in select_cells(["federated-shared-fedavg", "centralized-full"])] == [
        "centralized-full", "federated-shared-fedavg"]
    with pytest.raises(PedsegError, match="unknown cell"):
        select_cells(["federated-shared-fedprox"])


@pytest.fixture(scope="module")
def reproduction(tmp_path_factory):
    root = tmp_path_factory.mktemp("reproduce")
    assert pedseg(["data", "synth", str(root / "data"), "--joints", "ankle,knee", "--train", "4", "--test", "2"]) == 0
    data = {j: root / "data" / j for j in ("ankle", "knee")}
    out = root / "out"
    content = reproduce(data, out, "tiny", 1, SETTINGS, CELL_NAMES)
    return data, out, content


def run_dir(out, cell):
    return out / "runs" / "fold-0" / cell


def test_every_cell_is_tested_on_the_same_cases(reproduction):
    _, out, content = reproduction
    cases = {cell: sorted((r["joint"], r["case"]) for r in content["cases"] if r["cell"] == cell)
             for cell in CELL_NAMES}
    assert all(c == cases["centralized-full"] for c in cases.values())
    assert len(cases["centralized-full"]) == 2 * 2 * 3  # 2 test cases of 2 joints, 3 bones each
    for name in ("results.md", "results.csv", "results.json", "cases.csv", "dice_per_round.png",
                 "dice_boxplots.png"):
        assert (out / name).stat().st_size > 0
    tests = [(t["reference"], t["other"], t["n"]) for t in content["wilcoxon"]]
    assert ("centralized-full", "centralized-individual", 4) in tests
    assert ("centralized-full", "federated-shared-fedavg", 4) in tests
    (ratio,) = content["federated_over_centralized"]  # its counterpart, centralized-shared, is not in the table
    assert ratio["cell"] == "federated-shared-fedavg" and ratio["centralized_dice"] is None
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert all(f"| {cell} |" in markdown for cell in CELL_NAMES)


def test_federated_shared_averages_the_whole_model(reproduction):
    _, out, _ = reproduction
    model, _, domains = load_checkpoint(run_dir(out, "federated-shared-fedavg") / "checkpoints" / "final.pt")
    assert [d.name for d in domains] == ["shared"]
    assert list(domains[0].labels) == ["background", "ankle/tibia", "ankle/talus", "ankle/calcaneus",
                                       "knee/femur", "knee/tibia", "knee/patella"]
    lines = [
        json.loads(x)
        for x in (run_dir(out, "federated-shared-fedavg") / "metrics.jsonl").read_text(encoding="utf-8").split("\n")
        if x
    ]
    assert all(line["aggregated_keys"] == len(model.state_dict()) for line in lines)  # norms and head too
    assert split_for_scheme(model, "shared")[1] == {}  # nothing stays at a site
    final = torch.load(run_dir(out, "federated-shared-fedavg") / "checkpoints" / "global_final.pt", weights_only=True)
    statistics = [v for k, v in final["shared_state_dict"].items() if k.endswith("running_var")]
    assert statistics and all(not torch.equal(v, torch.ones_like(v)) for v in statistics)  # trained, then averaged


def test_a_rerun_resumes_and_redoes_only_an_interrupted_cell(reproduction, capsys):
    data, out, _ = reproduction
    kept = run_dir(out, "federated-shared-fedavg") / "results.json"
    before = kept.stat().st_mtime_ns
    (run_dir(out, "centralized-individual") / "results.json").unlink()  # as if interrupted before the end
    reproduce(data, out, "tiny", 1, SETTINGS, CELL_NAMES)
    assert kept.stat().st_mtime_ns == before
    assert (run_dir(out, "centralized-individual") / "results.json").is_file()
    finished = [json.loads(x)["cell"] for x in (out / "cells.jsonl").read_text(encoding="utf-8").splitlines()]
    assert finished == ["centralized-individual", "centralized-full", "federated-shared-fedavg",
                        "centralized-individual"]
    assert "federated-shared-fedavg: finished earlier, kept" in capsys.readouterr().out


def test_other_settings_in_the_same_folder_are_refused(reproduction, capsys):
    data, out, _ = reproduction
    args = ["reproduce", *(a for j, p in data.items() for a in ("--data", f"{j}={p}")), "--out", str(out),
            "--preset", "tiny", "--cells", ",".join(CELL_NAMES), *(a for s in SETTINGS for a in ("--set", s)),
            "--set", "train.learning_rate=0.1"]
    assert pedseg(args) == 2
    assert "other settings (config, overrides differ); choose a new --out" in capsys.readouterr().err


def test_a_folder_trained_with_another_meaning_of_the_preset_is_refused(reproduction, monkeypatch):
    data, out, _ = reproduction  # as if a newer pedseg changed the `tiny` preset
    monkeypatch.setitem(PRESETS["tiny"]["train"], "learning_rate", 0.1)
    with pytest.raises(PedsegError, match=r"other settings \(config differ\)"):
        reproduce(data, out, "tiny", 1, SETTINGS, CELL_NAMES)


def test_federated_cells_refuse_an_evaluation_split_their_sites_do_not_keep():
    """A run config never sets a site's evaluation split, so federated cells run one fold and the default split."""
    folds = [fold_config("tiny", None, {}, 2, fold) for fold in range(2)]
    with pytest.raises(PedsegError, match="--folds and data.validation_fraction: federated cells"):
        require_sites_split(folds, select_cells(["centralized-full", "federated-full-fedavg"]))
    require_sites_split(folds, select_cells(["centralized-full"]))
    require_sites_split([fold_config("tiny", None, {}, 1, 0)], select_cells(["federated-full-fedavg"]))
    other = fold_config("tiny", None, {"data": {"validation_fraction": 0.5}}, 1, 0)
    with pytest.raises(PedsegError, match="federated cells"):
        require_sites_split([other], select_cells(["federated-shared-fedavg"]))
