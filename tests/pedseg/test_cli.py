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


def status_of(args: list[str]) -> int:
    """`pedseg ARGS`'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(args)
    except SystemExit as done:
        return done.code


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, run):
    """Files a user may point at by mistake: empty, truncated, the federation's shared weights."""
    from pedseg_core.model.checkpoint import SHARED_FORMAT
    from pedseg_core.torch_files import save_atomically

    root = tmp_path_factory.mktemp("bad")
    (root / "empty.pt").write_bytes(b"")
    whole = (run / "checkpoints" / "final.pt").read_bytes()
    (root / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (root / "checkpoints").mkdir()
    save_atomically(root / "checkpoints" / "global_final.pt", {"format": SHARED_FORMAT})
    (root / "empty.yaml").write_text("", encoding="utf-8")
    (root / "truncated.yaml").write_text("train:\n  epochs: [1,\n", encoding="utf-8")
    (root / "binary.yaml").write_bytes(b"\x80\x04\x95\xff\xfe")
    return root


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "knee", "--out", "X"], "expected JOINT=DIR"),

    (["train", "--data", "ankle=D", "--out", "X", "--set", "train.epochs=many"],
     "train.epochs must be a valid integer, got 'many'"),
    (["train", "--data", "ankle=D", "--out", "X", "--set", "train.epoch=3"], "unknown option 'epoch'"),
    (["train", "--data", "ankle=D", "--out", "X", "--preset", "huge"], "argument --preset: invalid choice: 'huge'"),
    (["train", "--data", "ankle=DATA", "--out", "X"], "a folder of datasets, not a dataset: give each of"),
    (["train", "--data", "ankle=D", "--out", "X", "--config", "BAD/truncated.yaml"], "truncated.yaml: invalid YAML"),
    (["train", "--data", "an kle=D", "--out", "X"], "--data an kle="),
    (["predict", "--checkpoint", "none.pt", "--joint", "knee", "--input", "D", "--out", "X"], "checkpoint not found"),
    (["predict", "--checkpoint", "BAD/empty.pt", "--joint", "ankle", "--input", "D", "--out", "X"],
     "empty.pt: cannot read checkpoint: the file is empty (0 bytes)"),
    (["predict", "--checkpoint", "BAD/truncated.pt", "--joint", "ankle", "--input", "D", "--out", "X"],
     "truncated.pt: cannot read checkpoint"),
    (["predict", "--checkpoint", "BAD/checkpoints/global_final.pt", "--joint", "ankle", "--input", "D", "--out", "X"],
     "the federation's shared weights, not a model; each site's personalized model is STATE_DIR/run-<id>/model.pt"),
    (["predict", "--checkpoint", "BAD/empty.pt", "--joint", "../ankle", "--input", "D", "--out", "X"],
     "--joint: joint name '../ankle' may hold only"),
    (["adapt", "--checkpoint", "BAD/empty.pt", "--joint", "ankle", "--data", "D", "--out", "X"],
     "empty.pt: cannot read federation weights: the file is empty (0 bytes)"),
    (["adapt", "--checkpoint", "BAD/empty.pt", "--joint", "ankle", "--data", "D", "--out", "X", "--site", "a b"],
     "--site: site name 'a b' may hold only"),
    (["evaluate", "--pred", "P", "--ref", "R"], "no dataset.json"),
    (["evaluate", "--pred", "P", "--ref", "D"], "a dataset, not a folder of reference label volumes: give --ref"),
    (["evaluate", "--pred", "P", "--ref", "DATA"], "a folder of datasets, not a folder of reference label volumes"),
    (["data", "check", "DATA"], "a folder of datasets, not a dataset: give each of"),
    (["data", "synth", "X", "--train", "0"], "argument --train: must be at least 1, got 0"),
    (["data", "synth", "X", "--joints", "ankle,../knee"], "--joints: joint name '../knee' may hold only"),
    (["reproduce", "--data", "ankle=D", "--out", "X", "--folds", "0"], "argument --folds: must be at least 1, got 0"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--rounds", "-1"],
     "argument --rounds: must be at least 0, got -1"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--set", "federation.evaluate_every=0"],
     "federation.evaluate_every must be at least 1, got 0"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--min-sites", "2"],
     "--min-sites 2: only 1 site(s) have a valid dataset"),
    (["federate", "--local", "--data", "a/b:ankle=D", "--out", "X"], "site name 'a/b' may hold only"),
    (["federate", "--local", "--data", "ab:an kle=D", "--out", "X"], "joint name 'an kle' may hold only"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--set", "federation.aggregation=mode"],
     "federation.aggregation must be one of mean, median, trimmed-mean"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--sites-per-joint", "2"],
     "--sites-per-joint is not an option of --local"),
    (["federate", "--simulation", "--data", "ankle=D", "--out", "X", "--threads", "2"],
     "--threads is not an option of --simulation"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--gpus-per-site", "1"],
     "--gpus-per-site is not an option of --local"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--scheme", "shared", "--secure-aggregation"],
     "--secure-aggregation needs a scheme"),
    (["federate", "--resume", "nowhere"], "nowhere/federation.json: not found"),
    (["federate", "--resume", "R", "--out", "X"], "--resume RUN continues with the run's own sites, directory"),
    (["federate", "--resume", "R", "--rounds", "3"], "settings: drop --rounds"),
    (["federate", "--resume", "R", "--scheme", "full"], "settings: drop --scheme"),
    (["federate", "--local", "--out", "X"], "federate needs --data (one per site) and --out RUN"),
    (["audit", "nowhere"], "nowhere/audit.jsonl: no audit log"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--policy", "none.yaml"], "none.yaml: cannot read"),
    (["federate", "--local", "--data", "ankle=D", "--out", "X", "--policy", "BAD/truncated.yaml"],
     "truncated.yaml: invalid YAML"),
    (["train", "--data", "ankle=D", "--out", "X", "--config", "BAD/binary.yaml"],
     "binary.yaml: not a YAML text file"),
    (["no-such-command"], "invalid choice: 'no-such-command'"),
])
def test_bad_options_give_one_clear_line(args, message, data, bad_files, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [a.replace("=DATA", f"={data}").replace("DATA", str(data)).replace("=D", f"={data / 'ankle'}")
            .replace("BAD", str(bad_files)) for a in args]
    args = [str(data / "ankle") if a == "D" else a for a in args]
    assert status_of(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_bare_pedseg_lists_its_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("data", "train", "federate", "predict", "adapt", "evaluate", "audit"))


def every_parser():
    """(name, parser) of `pedseg` and each of its subcommands, nested ones included."""
    import argparse

    from pedseg.cli import build_parser

    pending = [("pedseg", build_parser())]
    while pending:
        name, parser = pending.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                pending += [(f"{name} {sub}", p) for sub, p in action.choices.items()]


def test_every_option_has_help_and_shows_its_default():
    import argparse

    for name, parser in every_parser():
        text = parser.format_help()
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.dest}: no help"
            if action.option_strings and action.default is not None and action.default is not False \
                    and action.default not in ([], argparse.SUPPRESS):
                assert "default" in parser._get_formatter()._get_help_string(action), f"{name} {action.dest}"
        assert "(default: small)" in text or "--preset" not in text, name


def test_the_scheme_has_one_default_in_train_federate_and_the_run_config():
    from pedseg.cli import build_parser
    from pedseg_core.config import build_config

    parser = build_parser()
    defaults = {parser.parse_args([command, "--data", "ankle=D", "--out", "X"]).scheme
                for command in ("train", "federate")}
    assert defaults == {build_config("tiny").scheme} == {"multi-domain"}


def test_predict_meshes_say_so_when_no_bone_was_predicted(run, data, tmp_path, monkeypatch, capsys):
    import pedseg_core.evaluate.predict as predicting

    monkeypatch.setattr(predicting, "predict_volume", lambda model, domain, volume, *rest: np.zeros(volume.shape,
                                                                                                     np.uint8))
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--joint", "ankle",
                 "--input", str(data / "ankle" / "imagesTs"), "--out", str(tmp_path / "p"), "--meshes"]) == 0
    out = capsys.readouterr().out
    assert "no surface mesh written: the model predicted no bone in 1 case(s)" in out
    assert "wrote surface meshes" not in out and not list((tmp_path / "p").glob("meshes/*.stl"))


def test_predict_given_the_federations_weights_names_the_sites_models(bad_files, tmp_path, capsys):
    """In a --local run's folder, `predict --checkpoint RUN/checkpoints/global_final.pt` lists the sites' models."""
    run = tmp_path / "run"
    shutil.copytree(bad_files / "checkpoints", run / "checkpoints")
    model = run / "sites" / "knee-a" / "run-7" / "model.pt"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x")
    assert main(["predict", "--checkpoint", str(run / "checkpoints" / "global_final.pt"), "--joint", "knee",
                 "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert f"each site's personalized model is {model} (knee-a)" in capsys.readouterr().err


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
