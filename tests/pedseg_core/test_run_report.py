"""`pedseg report RUN` (pedseg_core.report.write_report): hand-written run folders in the formats the runs write
(federated rounds with a missing site, a rejected update and DP epsilon; a centralized run with predictions; an
unfinished run; a reproduction; folders that are no run), then the report of a real centralized run opened in
headless Chromium, which must decode every figure (and reports a corrupted one)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pedseg.cli import main as pedseg
from pedseg_core.config import build_config, save_yaml
from pedseg_core.errors import PedsegError
from pedseg_core.report import write_report
from pedseg_core.report.run_files import read_run

IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([A-Za-z0-9+/=]+)">')


def images(html: str) -> dict[str, Image.Image]:
    """alt -> the decoded PNG of every figure (each must be a whole, valid PNG)."""
    found = {}
    for alt, data in IMG.findall(html):
        png = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        png.load()
        assert png.format == "PNG" and min(png.size) > 50, alt
        found[alt] = png
    assert html.count("<img") == len(found)  # every <img> is an embedded PNG
    return found


def self_contained(html: str) -> None:
    assert "<script" not in html and "http://" not in html and "https://" not in html
    assert not re.search(r'(src|href)="(?!data:)', html)


def notes(html: str) -> list[str]:
    return re.findall(r'<p class="note">(.*?)</p>', html)


def headings(html: str) -> list[str]:
    return re.findall(r"<h[23]>(.*?)</h[23]>", html)


def write_config(run: Path) -> None:
    run.mkdir(parents=True, exist_ok=True)
    save_yaml(build_config("tiny"), run / "config.yaml")


def write_lines(path: Path, lines: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + tail, encoding="utf-8")


def site_result(joint: str, dice: dict[str, float], epsilon: float | None = None) -> dict:
    result = {"joint": joint, "cases": 2, "dice": dice, "hd95": {b: 3.0 for b in dice},
              "assd": {b: 1.0 for b in dice}, "mean_dice": float(np.mean(list(dice.values())))}
    return result | ({"epsilon": epsilon} if epsilon is not None else {})


def evaluation(dice: dict[str, dict[str, float]]) -> dict:
    sites = {s: {k: v for k, v in site_result(s, d).items() if k in ("dice", "hd95", "assd", "mean_dice")}
             for s, d in dice.items()}
    return {"mean_dice": float(np.mean([s["mean_dice"] for s in sites.values()])), "sites": sites}


BONES = {"ankle": ("tibia", "talus"), "knee": ("femur", "patella"), "shoulder": ("humerus", "scapula")}


def round_line(number: int, trained: list[str], missing=(), rejected=(), errors=(), dp: bool = True) -> dict:
    """A metrics.jsonl round line as server/strategy.py writes it (DP sites: epsilon, no train-loss)."""
    sites = {s: {"joint": s, "num-examples": 12, "lr": 0.002, "train-time-s": 1.5, "client-time-s": 2.0}
             | ({"epsilon": 2.5 * number} if dp else {"train-loss": 1.0 / number}) for s in trained}
    return {"round": number, "sites": sites, "errors": [{"site": s, "reason": r} for s, r in errors],
            "rejected": [{"site": s, "reason": r} for s, r in rejected], "update_norms": {s: 1.0 for s in trained},
            "missing": [{"site": s, "reason": r} for s, r in missing], "train_loss": None, "examples": 36.0,
            "aggregated_keys": 42, "aggregation": "mean", "aggregation_s": 0.1, "round_time_s": 10.0 + number,
            "evaluation": evaluation({s: {b: 0.2 * number for b in BONES[s]} for s in ("ankle", "knee", "shoulder")})}


@pytest.fixture
def federated_run(tmp_path) -> Path:
    run = tmp_path / "fed"
    write_config(run)
    write_lines(run / "metrics.jsonl", [
        {"stage": "prior", "round": 1}, {"stage": "prior", "round": 2},
        round_line(1, ["ankle", "knee", "shoulder"]),
        round_line(2, ["ankle"], missing=[("shoulder", "no reply within round-timeout")],
                   rejected=[("knee", "update norm 812.5 exceeds norm_bound 10.0")]),
        round_line(3, ["ankle", "knee"], errors=[("shoulder", "site lost its dataset")],
                   missing=[("shoulder", "error reply")]),
    ])
    sites = {s: site_result(s, {b: 0.6 for b in BONES[s]}, epsilon=7.5) for s in ("ankle", "knee", "shoulder")}
    (run / "results.json").write_text(json.dumps({"mode": "federated", "scheme": "full", "strategy": "fedavg",
                                                  "rounds": 3, "sites": sites, "mean_dice": 0.6}), encoding="utf-8")
    (run / "logs").mkdir()
    (run / "logs" / "run-status.json").write_text(
        json.dumps({"status": "finished:completed", "elapsed": 40.5}), encoding="utf-8"
    )
    return run


def test_federated_run_reads_rounds_missing_sites_rejected_updates_and_epsilon(federated_run):
    run = read_run(federated_run)
    assert run.kind == "federated" and [r.round for r in run.rounds] == [1, 2, 3] and len(run.prior_rounds) == 2
    assert run.sites == ["ankle", "knee", "shoulder"]
    second = run.rounds[1]
    assert set(second.sites) == {"ankle"} and [e.site for e in second.missing] == ["shoulder"]
    assert [(e.site, e.reason) for e in second.rejected] == [("knee", "update norm 812.5 exceeds norm_bound 10.0")]
    assert run.rounds[2].epsilon == {"ankle": 7.5, "knee": 7.5} and run.rounds[2].errors[0].site == "shoulder"
    assert set(run.rounds[0].site_evaluations) == {"ankle", "knee", "shoulder"}


def test_federated_report_has_every_section(federated_run):
    html = (write_report(federated_run)).read_text(encoding="utf-8")
    assert (federated_run / "report.html").is_file()
    self_contained(html)
    assert headings(html) == ["Final results per site and bone", "Dice per round, per site",
                              "Per-bone Dice of the test cases", "Predictions on test slices", "Federation timeline",
                              "Resolved configuration (config.yaml)"]
    figures = images(html)
    assert set(figures) == {"Dice per round per site", "training loss and epsilon per round",
                            "per-bone box plots of per-case Dice", "federation timeline"}
    assert "3 rounds logged, 36 s in all; sites missing or failing in some round: shoulder" in html
    assert "updates rejected from: knee" in html and "epsilon spent ankle 7.50, knee 7.50" in html
    assert "shoulder: no reply within round-timeout" in html and "knee: update norm 812.5 exceeds" in html
    assert "shoulder: site lost its dataset" in html and "stage 1 of the full scheme" in html
    assert "Flower status" in html and "finished:completed" in html
    assert "backbone: resnet10" in html  # the resolved configuration
    assert any("No predictions were kept" in n for n in notes(html))


@pytest.fixture
def centralized_run(tmp_path, write_dataset) -> tuple[Path, Path]:
    """A centralized run folder of `pedseg train`'s format, its predictions the test labels themselves."""
    dataset = write_dataset(tmp_path / "ankle", n_train=1, n_test=2)
    run = tmp_path / "central"
    write_config(run)
    write_lines(run / "metrics.jsonl", [
        {"stage": "prior", "prior_recon_first": 2.8, "prior_recon_last": 2.3, "time_s": 1.0},
        *({"stage": "full", "epoch": e, "loss": 2.0 / e, "lr": 0.001, "slices": 80, "time_s": 5.0} for e in (1, 2))])
    per_case = {}
    (run / "predictions" / "ankle").mkdir(parents=True)
    for label in sorted((dataset / "labelsTs").iterdir()):
        shutil.copy(label, run / "predictions" / "ankle" / label.name)
        per_case[label.name.removesuffix(".nii.gz")] = {"dice": {"a": 0.9, "b": 0.7}, "hd95": {"a": 1.0, "b": None},
                                                        "assd": {"a": 0.5, "b": None}}
    (run / "results.json").write_text(json.dumps({
        "mode": "centralized", "scheme": "full", "strategy": None, "rounds": 2, "mean_dice": 0.8,
        "sites": {"ankle": site_result("ankle", {"a": 0.9, "b": 0.7}) | {"per_case": per_case}}}), encoding="utf-8")
    return run, dataset


def test_centralized_report_overlays_predictions_on_the_test_images(centralized_run, tmp_path):
    run, dataset = centralized_run
    out = write_report(run, tmp_path / "elsewhere" / "r.html", data={"ankle": dataset})
    html = out.read_text(encoding="utf-8")
    self_contained(html)
    assert "Federation timeline" not in html and "Training per epoch" in html
    figures = images(html)
    assert set(figures) == {"training loss per epoch", "per-bone box plots of per-case Dice",
                            "predictions of ankle on test slices"}
    assert figures["predictions of ankle on test slices"].size[1] > 1.5 * figures["training loss per epoch"].size[1]
    assert "2 cases" not in notes(html) and not any("image" in n for n in notes(html))


def test_centralized_run_without_data_paths_shows_its_predictions_alone(centralized_run):
    run, _ = centralized_run
    html = write_report(run).read_text(encoding="utf-8")
    assert "predictions of ankle on test slices" in images(html)
    assert any("no data path to find the test images" in n for n in notes(html))


def test_an_unfinished_run_shows_what_it_logged(tmp_path):
    run = tmp_path / "unfinished"
    write_config(run)
    line = round_line(1, ["ankle", "knee"], dp=False)
    write_lines(run / "metrics.jsonl", [line], tail='{"round": 2, "sites": {"ank')  # killed while writing
    files = read_run(run)
    assert files.results is None and files.kind == "federated" and [r.round for r in files.rounds] == [1]
    html = write_report(run).read_text(encoding="utf-8")
    assert any("has not finished" in n for n in notes(html))
    assert "Federation timeline" in html and "Final results per site and bone" not in html
    assert {"Dice per round per site", "training loss and epsilon per round", "federation timeline"} <= set(
        images(html))


@pytest.mark.parametrize("server_started", [True, False])
def test_a_run_killed_before_its_first_round_is_reported_as_such(tmp_path, server_started):
    """`pedseg federate --local` killed before round 1: federation.json (and config.yaml once the ServerApp
    started), no metrics.jsonl: a report that says no round was logged, not "not a pedseg run"."""
    run = tmp_path / "killed"
    run.mkdir()
    (run / "federation.json").write_text(json.dumps({"data": {}, "joints": {}}), encoding="utf-8")
    if server_started:
        write_config(run)
    files = read_run(run)
    assert files.kind == "federated" and files.rounds == [] and files.results is None
    html = write_report(run).read_text(encoding="utf-8")
    assert "metrics.jsonl holds no round yet." in notes(html)


def test_a_reproduction_report_holds_its_tables_and_every_cell(centralized_run, tmp_path):
    run, dataset = centralized_run
    repro = tmp_path / "repro"
    cell = repro / "runs" / "fold-0" / "centralized-full"
    shutil.copytree(run, cell)
    (repro / "reproduce.json").write_text(
        json.dumps(
            {
                "data": {"ankle": str(dataset)},
                "preset": "tiny",
                "folds": 1,
                "cells": ["centralized-full", "federated-full-fedavg"],
            }
        ),
        encoding="utf-8",
    )
    (repro / "cells.jsonl").write_text(
        json.dumps({"fold": 0, "cell": "centralized-full", "seconds": 12.5}) + "\n", encoding="utf-8"
    )
    html = write_report(repro).read_text(encoding="utf-8")
    self_contained(html)
    assert "No results.json: the reproduction has not finished" in html
    assert "fold 0, federated-full-fedavg: not run yet" in html
    assert "fold-0/centralized-full: mean Dice 0.800" in html
    assert "predictions of ankle on test slices" in images(html)  # found through reproduce.json's data paths


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such run folder"),
    (lambda p: p.mkdir(), "not a pedseg run: no config.yaml"),
    (lambda p: (write_config(p), (p / "results.json").write_text("[1]", encoding="utf-8")), "expected a JSON object"),
    (lambda p: (write_config(p), write_lines(p / "metrics.jsonl", [{"round": 1}], tail="oops\n{}\n")),
     "metrics.jsonl:2: not a JSON line"),
])
def test_a_folder_that_is_no_run_is_one_line_of_error(tmp_path, make, message):
    folder = tmp_path / "folder"
    make(folder)
    with pytest.raises(PedsegError, match=re.escape(message)) as error:
        write_report(folder)
    assert "\n" not in str(error.value) and str(folder) in str(error.value)
    assert not (folder / "report.html").exists()


# --- the report of a real run in headless Chromium -------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")

# Every <img>: decode() must resolve, it must have a size, and drawn on a canvas none of its pixels may be left
# transparent (the figures are opaque: a truncated or damaged PNG is only partly drawn).
CHECK_IMAGES = """Promise.all([...document.images].map(async (img) => {
  try { await img.decode(); } catch (e) { return {alt: img.alt, error: String(e), width: img.naturalWidth}; }
  const canvas = document.createElement('canvas');
  canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
  const context = canvas.getContext('2d');
  context.drawImage(img, 0, 0);
  const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
  let transparent = 0;
  for (let k = 3; k < pixels.length; k += 4) if (pixels[k] === 0) transparent++;
  return {alt: img.alt, error: null, width: img.naturalWidth, height: img.naturalHeight, transparent};
}))"""


class Chromium:
    """Headless Chromium driven through the DevTools protocol on a pipe (--remote-debugging-pipe: commands on
    its fd 3, replies on its fd 4, JSON messages ended by NUL); --no-sandbox: CI runs it as root."""

    def __init__(self, executable: str, profile: Path) -> None:
        commands_r, commands_w = os.pipe()
        replies_r, replies_w = os.pipe()

        def as_fds_3_and_4():  # in the child, before exec: the pipe ends as fds 3 and 4 (kept, as pass_fds)
            a, b = os.dup(commands_r), os.dup(replies_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--hide-scrollbars", "--window-size=1280,2000", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            pass_fds=(3, 4), preexec_fn=as_fds_3_and_4)
        os.close(commands_r)
        os.close(replies_w)
        self.commands, self.replies, self.buffer, self.last_id = commands_w, replies_r, b"", 0

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 20.0):
        self.last_id += 1
        message = {"id": self.last_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.last_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
            chunk = os.read(self.replies, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe: {self.process.stderr.read().decode()[-2000:]}")
            self.buffer += chunk

    def open(self, path: Path, timeout: float = 20.0) -> str:
        """A new tab showing `path`, loaded (images included); returns its session id."""
        url = path.resolve().as_uri()
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(session, f"location.href === {json.dumps(url)} && document.readyState === "
                                          "'complete'"):
                    return session
            except RuntimeError:  # the context went away while the page was navigating
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{url} did not load within {timeout} s")

    def evaluate(self, session: str, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (OSError, RuntimeError, TimeoutError):
            pass
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process.stderr.close()
        os.close(self.commands)
        os.close(self.replies)


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium): the report is not opened in a browser")
    with tempfile.TemporaryDirectory(prefix="pedseg-chromium-") as profile:
        browser = Chromium(CHROMIUM, Path(profile))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """A real centralized run (`pedseg train`, tiny preset, one step) on synthetic data, in a few seconds."""
    root = tmp_path_factory.mktemp("report-run")
    assert pedseg(["data", "synth", str(root / "data"), "--joints", "ankle,knee", "--train", "1", "--test", "1"]) == 0
    data = {j: root / "data" / j for j in ("ankle", "knee")}
    run = root / "run"
    args = ["train", "--preset", "tiny", "--out", str(run)]
    for setting in ("train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=2", "train.precision=fp32"):
        args += ["--set", setting]
    for joint, path in data.items():
        args += ["--data", f"{joint}={path}"]
    assert pedseg(args) == 0
    return run, data


def check_page(chromium: Chromium, path: Path) -> list[dict]:
    return chromium.evaluate(chromium.open(path), CHECK_IMAGES)


def test_the_report_of_a_real_run_renders_in_chromium_with_its_figures(real_run, chromium, tmp_path):
    run, data = real_run
    report = write_report(run, tmp_path / "report.html", data=data)
    html = report.read_text(encoding="utf-8")
    self_contained(html)
    expected = set(images(html))
    assert expected == {"training loss per epoch", "per-bone box plots of per-case Dice",
                        "predictions of ankle on test slices", "predictions of knee on test slices"}
    session = chromium.open(report)
    shown = chromium.evaluate(session, CHECK_IMAGES)
    assert {i["alt"] for i in shown} == expected
    for figure in shown:
        assert figure["error"] is None and figure["width"] > 0 and figure["height"] > 0, figure
        assert figure["transparent"] == 0, figure
    text = chromium.evaluate(session, "document.body.innerText")
    assert "Predictions on test slices" in text and "Resolved configuration" in text
    screenshot = base64.b64decode(chromium.send("Page.captureScreenshot", {"format": "png"}, session)["data"])
    (tmp_path / "report.png").write_bytes(screenshot)
    shot = np.asarray(Image.open(io.BytesIO(screenshot)).convert("L"))
    assert shot.shape[1] == 1280 and shot.shape[0] > 1000
    assert (shot < 128).mean() > 0.02  # not a blank page: text, tables and figures drawn


def test_chromium_finds_a_corrupted_figure(real_run, chromium, tmp_path):
    """The check above fails on a broken image: one figure replaced by bytes that are no PNG, one truncated."""
    run, data = real_run
    html = write_report(run, tmp_path / "report.html", data=data).read_text(encoding="utf-8")
    (first, png), (second, other) = IMG.findall(html)[:2]
    broken = html.replace(png, base64.b64encode(b"not a PNG at all").decode())
    broken = broken.replace(other, base64.b64encode(base64.b64decode(other)[:2000]).decode())
    (tmp_path / "broken.html").write_text(broken, encoding="utf-8")
    shown = {i["alt"]: i for i in check_page(chromium, tmp_path / "broken.html")}
    assert shown[first]["error"] is not None and shown[first]["width"] == 0
    assert shown[second]["error"] is None and shown[second]["transparent"] > 0  # drawn only in part
    assert all(i["error"] is None and i["transparent"] == 0 for alt, i in shown.items() if alt not in (first, second))


def test_pedseg_report_command(real_run, tmp_path, capsys):
    """`pedseg report RUN [--data JOINT=DIR]` writes RUN/report.html; a folder that is no run: exit 2, one line."""
    run, data = real_run
    args = ["report", str(run), *(f"--data={j}={p}" for j, p in data.items())]
    assert pedseg(args) == 0
    assert capsys.readouterr().out.strip() == f"wrote {run / 'report.html'}"
    assert "predictions of ankle on test slices" in (run / "report.html").read_text(encoding="utf-8")
    assert pedseg(["report", str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"pedseg: error: {tmp_path}: not a pedseg run")
