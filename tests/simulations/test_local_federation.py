"""A real federation on loopback: flower-superlink + four pedseg-client SuperNodes (one with a broken
dataset), tiny preset, two rounds, FedAvg over the shared weights."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from nibabel.affines import voxel_sizes

from client.approved_app import app_hash
from flower_common.run_config import config_from_run_config
from pedseg.cli import main as pedseg
from pedseg_core.config import build_config
from pedseg_core.data.geometry import through_plane_axis
from pedseg_core.model.partition import split_state_dict
from pedseg_core.model.unet import MultiDomainUNet
from simulations.local import federate_local
from tests.app_folder import APP_DIR
from tests.process_checks import family, wait_gone

JOINTS = ("ankle", "knee", "shoulder")
STEPS = 3
ROUNDS = 2


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    assert pedseg(["data", "synth", str(data), "--train", "2", "--test", "1"]) == 0
    broken = data / "broken"
    shutil.copytree(data / "knee", broken)
    truncated = next((broken / "labelsTr").iterdir())
    truncated.write_bytes(truncated.read_bytes()[:300])
    out = tmp_path_factory.mktemp("runs") / "fed"
    sites = {j: data / j for j in JOINTS} | {"broken": broken}
    # fp32 messages: the weighted-mean check below is exact (fp16 messages: test_simulation.py)
    config = config_from_run_config({"preset": "tiny", "rounds": ROUNDS, "strategy": "fedavg",
                                     "message-dtype": "fp32", "overrides": f"train.steps_per_epoch={STEPS}"})
    results = federate_local(sites, out, config, threads=1, keep_sent=True, progress=False)
    return out, results, truncated


def sent(out, site, server_round):
    (run,) = (out / "sites" / site).glob("run-*")
    return torch.load(run / "sent" / f"round-{server_round:03d}.pt", weights_only=True)


def test_results_follow_the_contract(federation):
    out, results, _ = federation
    assert results["mode"] == "federated" and results["strategy"] == "fedavg" and results["rounds"] == ROUNDS
    assert set(results["sites"]) == set(JOINTS)
    for joint in JOINTS:
        site = results["sites"][joint]
        assert site["joint"] == joint and site["cases"] == 1
        assert set(site["dice"]) == set(site["hd95"]) == set(site["assd"])
    assert json.loads((out / "results.json").read_text(encoding="utf-8")) == results
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["round"] for line in lines] == [1, 2]
    assert all(set(line["sites"]) == set(JOINTS) and line["round_time_s"] > 0 for line in lines)
    # honest sites pass every update check; their update norms are logged
    assert all(line["rejected"] == [] and set(line["update_norms"]) == set(JOINTS) for line in lines)
    # every round's global model is evaluated by every site (round 1's during round 2's training message)
    assert all(set(line["evaluation"]["sites"]) == set(JOINTS) for line in lines)
    assert lines[-1]["evaluation"]["mean_dice"] == pytest.approx(results["mean_dice"])


def test_no_case_id_reaches_the_server_and_every_site_audits_what_left_it(federation, capsys):
    """The default policy: per-bone means and case counts leave, no case id; each site's audit.jsonl lists
    every message that left it, and nothing in it is flagged."""
    out, results, truncated = federation
    data = truncated.parents[2]
    case_ids = {p.name.removesuffix(".nii.gz").removesuffix("_0000") for joint in JOINTS
                for p in (data / joint).glob("*s*/*.nii.gz")}
    assert len(case_ids) == 3 * len(JOINTS)
    server_side = [p for p in out.rglob("*") if p.is_file() and "sites" not in p.relative_to(out).parts
                   and not p.name.startswith("site-")]
    assert out / "results.json" in server_side and out / "logs" / "serverapp.log" in server_side
    # `flwr log --stream` followed the run to its end: the strategy's last lines are in the log
    assert "Strategy execution finished" in (out / "logs" / "serverapp.log").read_text(encoding="utf-8")
    for path in server_side:
        content = path.read_bytes()
        assert not [c for c in case_ids if c.encode() in content], path
    assert all("per_case" not in site for site in results["sites"].values())
    for joint in JOINTS:
        audit = [
            json.loads(x) for x in (out / "sites" / joint / "audit.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert {line["type"] for line in audit} == {"train", "evaluate"}
        assert sorted(line["round"] for line in audit if line["type"] == "train") == list(range(1, ROUNDS + 1))
        assert pedseg(["audit", str(out / "sites" / joint)]) == 0
    assert "nothing flagged" in capsys.readouterr().out


def test_global_weights_are_the_example_weighted_mean_of_what_sites_sent(federation):
    out, _, _ = federation
    final = torch.load(out / "checkpoints" / "global_final.pt", weights_only=True)["shared_state_dict"]
    replies = [sent(out, j, ROUNDS) for j in JOINTS]
    weights = np.array([r["num_examples"] for r in replies], dtype=np.float64)
    assert set(final) == set(replies[0]["arrays"])
    for key, value in final.items():
        expected = sum(w * r["arrays"][key].double() for w, r in zip(weights, replies)) / weights.sum()
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)


def test_only_shared_convolution_weights_leave_a_site(federation):
    out, _, _ = federation
    model = MultiDomainUNet([4], build_config("tiny").model)
    shared, private = split_state_dict(model)
    for joint in JOINTS:
        for server_round in range(1, ROUNDS + 1):
            arrays = sent(out, joint, server_round)["arrays"]
            assert set(arrays) == set(shared) and not set(arrays) & set(private)
            # filters and biases only: no array has an image-sized dimension
            assert max(max(v.shape[2:], default=1) for v in arrays.values()) <= 7


def test_private_layers_differ_between_sites_and_persist_across_rounds(federation):
    out, _, _ = federation
    privates = {}
    for joint in JOINTS:
        (run,) = (out / "sites" / joint).glob("run-*")
        privates[joint] = torch.load(run / "private.pt", weights_only=True)
        counts = {int(v) for k, v in privates[joint].items() if k.endswith("num_batches_tracked")}
        assert counts == {ROUNDS * STEPS}  # BatchNorm statistics carried from round 1 into round 2
    assert privates["ankle"]["heads.heads.0.weight"].shape[0] == 4
    assert privates["shoulder"]["heads.heads.0.weight"].shape[0] == 3
    key = "encoder.bn1.norms.0.running_mean"
    assert not torch.equal(privates["ankle"][key], privates["knee"][key])


def test_each_site_keeps_the_personalized_model_it_evaluated_for_pedseg_predict(federation, tmp_path):
    out, results, truncated = federation
    data = truncated.parents[2]
    for joint in JOINTS:
        (run,) = (out / "sites" / joint).glob("run-*")
        model = run / "model.pt"
        assert torch.load(model, weights_only=True)["round"] == ROUNDS
        predictions, report = tmp_path / joint, tmp_path / f"{joint}.json"
        assert pedseg(["predict", "--checkpoint", str(model), "--joint", joint,
                       "--input", str(data / joint / "imagesTs"), "--out", str(predictions)]) == 0
        assert pedseg(["evaluate", "--pred", str(predictions), "--ref", str(data / joint / "labelsTs"),
                       "--json", str(report)]) == 0
        # the same model on the same cases: the site's own score in results.json, bone by bone. Not bit for
        # bit: the site ran on one thread with channels-last weights, predict on two with contiguous ones, so
        # oneDNN sums in another order (~1e-8 apart) and a voxel whose classes tie that closely can flip (CI
        # once saw a mean Dice 1.3e-5 apart); 1e-3 is a few voxels of these bones.
        scored = json.loads(report.read_text(encoding="utf-8"))
        assert scored["mean"]["dice"] == pytest.approx(results["sites"][joint]["dice"], abs=1e-3)


def test_broken_site_is_refused_with_a_clear_message(federation, capfd):
    out, results, truncated = federation
    assert "broken" not in results["sites"]
    log = (out / "logs" / "site-broken.log").read_text(encoding="utf-8")
    assert f"{truncated}: cannot read NIfTI" in log and "Traceback" not in log


def test_the_default_federation_runs_tls_and_admits_only_registered_site_keys(federation):
    out, _, _ = federation
    pki = out / "pki"
    assert all((pki / name).is_file() for name in ("ca.crt", "server.crt", "server.key"))
    superlink_log = (out / "logs" / "superlink.log").read_text(encoding="utf-8")
    command = superlink_log.splitlines()[0]
    assert "--enable-supernode-auth" in command and "--ssl-certfile" in command and "--insecure" not in command
    assert "Uvicorn running on https://127.0.0.1:" in superlink_log
    for site in (*JOINTS, "broken"):
        assert (pki / "sites" / f"{site}.key").is_file()
        log = (out / "logs" / f"site-{site}.log").read_text(encoding="utf-8")
        assert "--insecure" not in log
        assert f"--root-certificates {pki / 'ca.crt'} --auth-key {pki / 'sites' / f'{site}.key'}" in log
    for site in JOINTS:  # each valid site's SuperNode started with the CA and its own key, and was admitted
        log = (out / "logs" / f"site-{site}.log").read_text(encoding="utf-8")
        key = pki / "sites" / f"{site}.key"
        assert f"--root-certificates {pki / 'ca.crt'} --auth-supernode-private-key {key}" in log
        assert "SuperNode ID:" in log
    assert superlink_log.count("Activated node_id=") >= len(JOINTS)
    connection = (out / ".flower" / "cli" / "config.toml").read_text(encoding="utf-8")
    assert f'root-certificates = "{pki / "ca.crt"}"' in connection and "insecure" not in connection


def processes_using(path):
    """Command lines of running processes that mention `path`."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(path) in part for part in proc.info["cmdline"] or []):
                found.append(proc.info["cmdline"])
        except psutil.Error:
            pass
    return found


def test_no_process_is_left_behind(federation):
    out, _, _ = federation
    assert processes_using(out) == []


def take_ctrl_c() -> None:
    """Let the child act on SIGINT even when the test suite runs as a background job of a non-interactive shell
    (which starts it with SIGINT ignored, and Python keeps an inherited "ignore")."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process_of_an_insecure_run(tmp_path, write_dataset):
    sites = [f"--data={name}={write_dataset(shape=(40, 40, 5))}" for name in ("a", "b")]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pedseg", "federate", "--local", *sites,
                             "--out", str(out), "--preset", "tiny", "--rounds", "50", "--insecure"],
                            stderr=subprocess.PIPE, encoding="utf-8", errors="replace", preexec_fn=take_ctrl_c)
    connection = out / ".flower" / "cli" / "config.toml"
    deadline = time.monotonic() + 120
    while not connection.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err
    assert "warning: --insecure: no TLS and no SuperNode authentication" in err
    assert "--insecure" in (out / "logs" / "superlink.log").read_text(encoding="utf-8").splitlines()[0]
    assert not (out / "pki").exists()
    assert processes_using(out) == []


def workers_and_serverapp_running(pids: set[int]) -> bool:
    names = set()
    for pid in pids:
        try:
            names.add(" ".join(psutil.Process(pid).cmdline()))
        except psutil.Error:
            pass
    return any("client.site_worker" in name for name in names) and any("flwr-serverapp" in name for name in names)


def test_a_killed_orchestrator_takes_every_process_of_its_run_with_it(tmp_path, write_dataset):
    sites = [f"--data={name}={write_dataset(shape=(40, 40, 5))}" for name in ("a", "b")]
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "pedseg", "federate", "--local", *sites,
                             "--out", str(out), "--preset", "tiny", "--rounds", "50"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, pids = time.monotonic() + 240, set()
    while not workers_and_serverapp_running(pids) and time.monotonic() < deadline:  # every process is up
        time.sleep(0.5)
        pids = family(proc.pid)  # the guards, the SuperLink with its SuperExec and ServerApp, each site's tree
    assert workers_and_serverapp_running(pids)
    proc.kill()
    proc.wait()
    assert wait_gone(pids, timeout=60) == set()
    assert processes_using(out) == []


def slices_of(dataset: Path) -> int:
    """The training slices of a dataset, counted from its NIfTI headers: each image's size along its thickest
    voxel axis."""
    total = 0
    for image in (dataset / "imagesTr").glob("*.nii.gz"):
        header = nib.load(image)
        total += header.shape[through_plane_axis(voxel_sizes(header.affine))]
    return total


def federate_two_joints(tmp_path, joints, scheme, overrides, policy=None):
    """Synthesize two joints (2 training cases each) and run a 2-round tiny federation of `scheme` on them."""
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", ",".join(joints), "--train", "2", "--test", "1"]) == 0
    config = config_from_run_config({"preset": "tiny", "scheme": scheme, "rounds": 2,
                                     "overrides": f"train.steps_per_epoch=2 contrastive.min_prototype_slices=16 "
                                                  f"{overrides}".strip()})
    return federate_local({j: data / j for j in joints}, tmp_path / "run", config, threads=1, progress=False,
                          policy=policy)


def split_dataset(source, targets):
    """Split a dataset's training cases between new datasets (same dataset.json, same test split)."""
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (source / "labelsTr").iterdir())
    for i, target in enumerate(targets):
        shutil.copytree(source, target)
        for case in [c for j, c in enumerate(cases) if j % len(targets) != i]:
            (target / "labelsTr" / f"{case}.nii.gz").unlink()
            (target / "imagesTr" / f"{case}_0000.nii.gz").unlink()


@pytest.mark.slow  # make test stays under 10 minutes; pooled heads also run in test_simulation.py
def test_sites_of_one_joint_pool_their_heads_and_keep_their_norms(tmp_path):
    data = tmp_path / "data"
    assert pedseg(["data", "synth", str(data), "--joints", "ankle,knee", "--train", "4", "--test", "1"]) == 0
    split_dataset(data / "knee", [tmp_path / "knee-a", tmp_path / "knee-b"])
    sites = {"ankle": data / "ankle", "knee-a": tmp_path / "knee-a", "knee-b": tmp_path / "knee-b"}
    joints = {"ankle": "ankle", "knee-a": "knee", "knee-b": "knee"}
    config = config_from_run_config({"preset": "tiny", "rounds": 3, "overrides": "train.steps_per_epoch=2"})
    out = tmp_path / "run"
    results = federate_local(sites, out, config, joints=joints, threads=1, keep_sent=True, progress=False)
    assert {s: r["joint"] for s, r in results["sites"].items()} == joints
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [line["pooled_heads"] for line in lines] == [[], ["knee"], ["knee"]]
    final = torch.load(out / "checkpoints" / "global_final.pt", weights_only=True)
    assert set(final["joint_heads"]) == {"knee"}
    replies = [sent(out, s, 3) for s in ("knee-a", "knee-b")]
    assert "joint-arrays" not in sent(out, "ankle", 3)  # a joint's only site keeps its head
    weights = [r["num_examples"] for r in replies]
    for key, value in final["joint_heads"]["knee"].items():
        expected = sum(w * r["joint-arrays"][key].double() for w, r in zip(weights, replies)) / sum(weights)
        torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-6)
    norms = []
    for site in ("knee-a", "knee-b"):
        (run,) = (out / "sites" / site).glob("run-*")
        norms.append(torch.load(run / "private.pt", weights_only=True)["encoder.bn1.norms.0.running_mean"])
    assert not torch.equal(*norms)


def test_full_scheme_learns_the_prior_first_then_exchanges_prototypes_only_as_per_joint_means(tmp_path):
    """`full` = multi-domain + contrastive + prior: the shape prior trains first, then each site's contrastive
    term uses the other joints' prototypes (one mean per joint). Its sites also approve pedseg's app by hash
    (`approved_apps`): the app `flwr run` sends passes the check."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"approved_apps: [{app_hash(APP_DIR)}]\nmin_prototype_slices: 16\n", encoding="utf-8")
    results = federate_two_joints(tmp_path, ("ankle", "shoulder"), "full", "prior.epochs=2", policy)
    assert results["scheme"] == "full" and set(results["sites"]) == {"ankle", "shoulder"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    prior, segmentation = lines[:2], lines[2:]
    assert [line["stage"] for line in prior] == ["prior", "prior"]
    assert all(line["prior-recon-last"] > 0 for line in prior)
    assert [line["round"] for line in segmentation] == [1, 2]
    for line in segmentation:
        assert line["prototype_joints"] == ["ankle", "shoulder"]
        for site, sent in line["sites"].items():  # every training slice of the site (fewer than max 128)
            assert sent["prior-loss"] > 0 and sent["contrastive-loss"] > 0
            assert sent["prototype-slices"] == slices_of(tmp_path / "data" / site)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "shape_prior.pt", weights_only=True)
    assert saved["union_labels"] == {"background": 0, "ankle/tibia": 1, "ankle/talus": 2, "ankle/calcaneus": 3,
                                     "shoulder/humerus": 4, "shoulder/scapula": 5}
    # the projection heads are shared weights: they are averaged like the filters
    final = torch.load(tmp_path / "run" / "checkpoints" / "global_final.pt", weights_only=True)
    assert any(k.startswith("projections.") for k in final["shared_state_dict"])


def test_a_new_hospital_adapts_the_federation_model(federation, tmp_path, capsys):
    """`pedseg adapt`: the federation's shared filters stay as they are (frozen) while the new site's norms and
    head train; the checkpoint it writes predicts with `pedseg predict`; --fine-tune-shared moves the filters."""
    out, _, truncated = federation
    data = truncated.parents[2] / "knee"
    weights = out / "checkpoints" / "global_final.pt"
    shared = torch.load(weights, weights_only=True)["shared_state_dict"]
    frozen, tuned = tmp_path / "frozen", tmp_path / "tuned"
    common = ["adapt", "--checkpoint", str(weights), "--joint", "knee", "--data", str(data), "--steps", "3"]
    assert pedseg([*common, "--out", str(frozen), "--cases", "1", "--site", "new-knee"]) == 0
    assert pedseg([*common, "--out", str(tuned), "--fine-tune-shared"]) == 0
    results = json.loads((frozen / "results.json").read_text(encoding="utf-8"))
    assert results["mode"] == "adapted" and len(results["train_cases"]) == 1 and set(results["sites"]) == {"new-knee"}
    assert set(results["sites"]["new-knee"]["dice"]) == {"femur", "tibia", "patella"}
    assert results["sites"]["new-knee"]["cases"] == 1
    before = {k: v for k, v in shared.items() if v.is_floating_point()}
    kept = torch.load(frozen / "checkpoints" / "final.pt", weights_only=True)["state_dict"]
    moved = torch.load(tuned / "checkpoints" / "final.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(kept[k], v) for k, v in before.items())
    assert not all(torch.equal(moved[k], v) for k, v in before.items())
    private = [k for k in kept if k not in shared and kept[k].is_floating_point()]
    initial = MultiDomainUNet([4], build_config("tiny", None, {}).model).state_dict()
    assert private and any(not torch.equal(kept[k], initial[k]) for k in private if k in initial)
    pred = tmp_path / "pred"
    assert pedseg(["predict", "--checkpoint", str(frozen / "checkpoints" / "final.pt"), "--joint", "new-knee",
                   "--input", str(data / "imagesTs"), "--out", str(pred)]) == 0
    assert len(list(pred.iterdir())) == 1
    capsys.readouterr()
    frozen_model = frozen / "checkpoints" / "final.pt"
    assert pedseg([*common, "--checkpoint", str(frozen_model), "--out", str(tmp_path / "x")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "final.pt: not a federation's shared weights" in line
