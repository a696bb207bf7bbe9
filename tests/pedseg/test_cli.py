"""`pedseg` end to end on real NIfTI files: synth -> check -> train -> predict -> evaluate, and bad input."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from pedseg.cli import main

JOINTS = ("ankle", "shoulder")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", str(out), "--joints", ",".join(JOINTS), "--train", "2", "--test", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    args = ["train", "--preset", "tiny", "--out", str(run), "--set", "train.epochs=1",
            "--set", "train.steps_per_epoch=4"]
    for j in JOINTS:
        args += ["--data", f"{j}={data / j}"]
    assert main(args) == 0
    return run


def test_check_accepts_synthetic_datasets(data, capsys):
    assert main(["data", "check", *(str(data / j) for j in JOINTS)]) == 0
    assert "status: OK" in capsys.readouterr().out


def test_run_directory_follows_the_contract(run):
    assert {p.name for p in run.iterdir()} >= {"config.yaml", "metrics.jsonl", "checkpoints", "results.json"}
    results = json.loads((run / "results.json").read_text(encoding="utf-8"))
    assert results["mode"] == "centralized" and results["scheme"] == "multi-domain"
    assert set(results["sites"]) == set(JOINTS)
    ankle = results["sites"]["ankle"]
    assert ankle["joint"] == "ankle" and ankle["cases"] == 1
    assert set(ankle["dice"]) == set(ankle["hd95"]) == set(ankle["assd"]) == {"tibia", "talus", "calcaneus"}
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["epoch"] == 1
    assert (run / "checkpoints" / "final.pt").is_file()


def test_predict_keeps_geometry_and_evaluate_matches_numpy(run, data, tmp_path, capsys):
    pred = tmp_path / "pred"
    ckpt = run / "checkpoints" / "final.pt"
    assert main(["predict", "--checkpoint", str(ckpt), "--joint", "shoulder",
                 "--input", str(data / "shoulder" / "imagesTs"), "--out", str(pred)]) == 0
    (image_path,) = (data / "shoulder" / "imagesTs").iterdir()
    out_path = pred / image_path.name.replace("_0000", "")
    image, out = nib.load(image_path), nib.load(out_path)
    assert out.shape == image.shape and np.allclose(out.affine, image.affine)
    assert np.asarray(out.dataobj).dtype == np.uint8

    report_path = tmp_path / "eval.json"
    assert main(["evaluate", "--pred", str(pred), "--ref", str(data / "shoulder" / "labelsTs"),
                 "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text(encoding="utf-8"))
    ref = np.asarray(nib.load(data / "shoulder" / "labelsTs" / out_path.name).dataobj)
    p = np.asarray(out.dataobj)
    case = out_path.name.removesuffix(".nii.gz")
    for bone, value in (("humerus", 1), ("scapula", 2)):
        a, b = p == value, ref == value
        expected = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert report["cases"][case]["dice"][bone] == pytest.approx(expected, abs=1e-6)
    # predicting again into the same folder refuses to overwrite
    assert main(["predict", "--checkpoint", str(ckpt), "--joint", "shoulder",
                 "--input", str(image_path), "--out", str(pred)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_predict_in_another_geometry(run, write_dataset, tmp_path):
    """A foreign image (slice axis 0, odd shape, oblique affine) gets labels of its own shape and affine."""
    root = write_dataset(shape=(7, 50, 37), spacing=(3.3, 0.5, 0.45), n_train=1, n_test=0)
    image = root / "imagesTr" / "case_000_0000.nii.gz"
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--joint", "ankle",
                 "--input", str(image), "--out", str(tmp_path / "p")]) == 0
    out = nib.load(tmp_path / "p" / "case_000.nii.gz")
    assert out.shape == (7, 50, 37) and np.allclose(out.affine, nib.load(image).affine)


def test_train_refuses_a_broken_dataset_naming_the_file(data, tmp_path, capsys):
    broken = tmp_path / "ankle"
    shutil.copytree(data / "ankle", broken)
    label = next((broken / "labelsTr").iterdir())
    label.write_bytes(label.read_bytes()[:200])  # truncated gzip
    status = main(["train", "--data", f"ankle={broken}", "--preset", "tiny", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2 and str(label) in err and "cannot read NIfTI" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "knee", "--out", "X"], "expected JOINT=DIR"),

    (["train", "--data", "ankle=D", "--out", "X", "--set", "train.epochs=many"],
     "train.epochs must be a valid integer, got 'many'"),
    (["train", "--data", "ankle=D", "--out", "X", "--set", "train.epoch=3"], "unknown option 'epoch'"),
    (["train", "--data", "ankle=D", "--out", "X", "--preset", "huge"], "preset 'huge' is unknown"),
    (["predict", "--checkpoint", "none.pt", "--joint", "knee", "--input", "D", "--out", "X"], "checkpoint not found"),
    (["evaluate", "--pred", "P", "--ref", "R"], "no dataset.json"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--rounds", "-1"], "federation.rounds must be 0"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--set", "federation.evaluate_every=0"],
     "federation.evaluate_every must be at least 1, got 0"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--min-sites", "2"],
     "--min-sites 2: only 1 site(s) have a valid dataset"),
    (["federate", "--local", "--data", "a/b:ankle=D", "--out", "X"], "site name 'a/b' may hold only"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--set", "federation.aggregation=krum"],
     "federation.aggregation must be one of mean, median, trimmed-mean"),
    (["federate", "--resume", "nowhere"], "nowhere/federation.json: not found"),
    (["federate", "--resume", "R", "--out", "X"], "--resume RUN continues with the run's own sites, directory"),
    (["federate", "--local", "--out", "X"], "federate needs --data (one per site) and --out RUN"),
    (["audit", "nowhere"], "nowhere/audit.jsonl: no audit log"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--policy", "none.yaml"], "none.yaml: cannot read"),
])
def test_bad_options_give_one_clear_line(args, message, data, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("=D", f"={data / 'ankle'}") for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_existing_run_directory_is_never_overwritten(data, run, capsys):
    before = (run / "results.json").read_bytes()
    assert main(["train", "--data", f"ankle={data / 'ankle'}", "--preset", "tiny", "--out", str(run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "results.json").read_bytes() == before


def test_wrong_joint_and_console_script_without_traceback(run, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pedseg", "predict", "--checkpoint",
                           str(run / "checkpoints" / "final.pt"), "--joint", "elbow", "--input", str(tmp_path),
                           "--out", str(tmp_path / "o")], capture_output=True, encoding="utf-8", errors="replace")
    assert proc.returncode == 2
    assert "no domain 'elbow' (it has: ankle, shoulder)" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_meshes_follow_the_predicted_bones(run, data, tmp_path, capsys):
    """`pedseg predict --meshes`: one closed STL per bone present in the predicted label volume, in LPS mm where
    that bone's voxels lie (computed here from the NIfTI affine), enclosing about its voxel volume."""
    import trimesh

    pred = tmp_path / "pred"
    args = ["predict", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--joint", "ankle",
            "--input", str(data / "ankle" / "imagesTs"), "--out", str(pred), "--meshes"]
    assert main(args) == 0
    (label_path,) = pred.glob("*.nii.gz")
    label = nib.load(label_path)
    values = np.asarray(label.dataobj)
    case = label_path.name.removesuffix(".nii.gz")
    present = {b: v for b, v in (("tibia", 1), ("talus", 2), ("calcaneus", 3)) if (values == v).any()}
    assert present and max((values == v).sum() for v in present.values()) >= 500
    assert {p.name for p in (pred / "meshes").iterdir()} == {f"{case}_{b}.stl" for b in present}
    voxel_volume = abs(np.linalg.det(label.affine[:3, :3]))
    for bone, value in present.items():
        mesh = trimesh.load(pred / "meshes" / f"{case}_{bone}.stl")
        assert mesh.is_watertight
        voxels = (values == value).sum()
        if voxels >= 500:  # a barely trained model's fragments of a few voxels lose more to smoothing
            assert mesh.volume == pytest.approx(voxels * voxel_volume, rel=0.05)
        centres = nib.affines.apply_affine(label.affine, np.argwhere(values == value)) * [-1, -1, 1]  # RAS -> LPS
        low, high = mesh.bounds
        assert np.all(low >= centres.min(0) - 3) and np.all(high <= centres.max(0) + 3)
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
