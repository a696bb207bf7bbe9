"""The `pedseg` subcommands that need no Flower (data, train, predict, adapt, report, evaluate, audit) and the
option parsing the federation's subcommands share; `pedseg/cli.py` assembles the command."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from pedseg_core.config import SCHEMES, parse_overrides
from pedseg_core.errors import EXIT_USER_ERROR, PedsegError

SITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # names files and processes of the site


def parse_data_args(values: Sequence[str]) -> dict[str, Path]:
    """["knee=/data/knee", ...] -> {"knee": Path("/data/knee")}, refusing malformed or repeated names."""
    data: dict[str, Path] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise PedsegError(f"--data {value}: expected JOINT=DIR, e.g. --data knee=/data/knee")
        if name in data:
            raise PedsegError(f"--data {value}: '{name}' is given twice")
        data[name] = Path(path)
    return data


def parse_site_args(values: Sequence[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """["knee-a:knee=/d/a", "ankle=/d/ankle"] -> ({site: dir}, {site: joint}); a site without ":JOINT" is
    named after its joint."""
    data = parse_data_args(values)
    sites, joints = {}, {}
    for name, path in data.items():
        site, _, joint = name.partition(":")
        if not SITE_NAME.fullmatch(site):
            raise PedsegError(f"--data {name}={path}: site name '{site}' may hold only letters, digits, '.', '_' "
                              "and '-'")
        if site in sites:
            raise PedsegError(f"--data {name}={path}: site '{site}' is given twice")
        sites[site], joints[site] = path, joint or site
    return sites, joints


def flatten_options(values: dict, prefix: str = "") -> list[str]:
    """{"train": {"epochs": 3}} -> ["train.epochs=3"] (values as compact JSON, which YAML reads back)."""
    pairs = []
    for key, value in values.items():
        if isinstance(value, dict):
            pairs += flatten_options(value, f"{prefix}{key}.")
        else:
            pairs.append(f"{prefix}{key}={json.dumps(value, separators=(',', ':'))}")
    return pairs


def cmd_synth(args: argparse.Namespace) -> int:
    from pedseg_core.data.synth import synthesize

    joints = [j.strip() for j in args.joints.split(",") if j.strip()]
    written = synthesize(Path(args.out), joints, args.train, args.test, args.seed)
    for joint, path in written.items():
        print(f"{joint}: {path}  ({args.train} training, {args.test} test cases)")
    return 0


def cmd_import_dicom(args: argparse.Namespace) -> int:
    from pedseg_core.data.dicom_import import import_dicom

    report = import_dicom(Path(args.dicom_dir), Path(args.out), args.joint, overwrite=args.overwrite)
    print(report.summary())
    print(f"predict with: pedseg predict --input {Path(args.out) / 'imagesTs'} --joint {args.joint} ...")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from pedseg_core.data.validate import check_dataset

    status = 0
    for folder in args.dirs:
        report = check_dataset(Path(folder))
        if report.ok:
            print(report.summary())
        else:
            for problem in report.problems:
                print(problem, file=sys.stderr)
            status = EXIT_USER_ERROR
    return status


def cmd_montage(args: argparse.Namespace) -> int:
    from pedseg_core.data.montage import save_montage

    save_montage([Path(d) for d in args.dirs], Path(args.out))
    print(f"wrote {args.out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from pedseg_core.config import build_config
    from pedseg_core.evaluate.table import results_table
    from pedseg_core.train.centralized import train_centralized

    overrides = parse_overrides([*args.set, *mlflow_settings(args.mlflow)])
    overrides["scheme"] = args.scheme
    cfg = build_config(args.preset, Path(args.config) if args.config else None, overrides)
    results = train_centralized(parse_data_args(args.data), cfg, Path(args.out))
    print(results_table(results))
    print(f"run directory: {args.out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from pedseg_core.device import resolve_device
    from pedseg_core.evaluate.predict import list_images, predict_files
    from pedseg_core.model.checkpoint import find_domain, load_checkpoint

    model, cfg, domains = load_checkpoint(Path(args.checkpoint))
    model.to(resolve_device(args.device))
    domain = find_domain(domains, args.joint, Path(args.checkpoint))
    images = list_images(Path(args.input))
    outputs = predict_files(model, domain, images, Path(args.out), cfg.data, cfg.eval.batch_size,
                            overwrite=args.overwrite, largest_component=not args.keep_all_components,
                            mesh_bones=domains[domain].bones if args.meshes else None,
                            min_fraction=cfg.eval.component_min_fraction)
    print(f"wrote {len(outputs)} label volume(s) to {args.out}")
    if args.meshes:
        print(f"wrote surface meshes (STL, scanner LPS mm, one per bone and case) to {Path(args.out) / 'meshes'}")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from pedseg_core.evaluate.table import results_table
    from pedseg_core.train.adapt import MODEL_FILE, adapt_site

    results = adapt_site(Path(args.weights), args.site or args.joint, args.joint, Path(args.data), Path(args.out),
                         args.steps, args.cases, args.fine_tune_shared)
    print(results_table(results))
    print(f"model for pedseg predict: {Path(args.out) / 'checkpoints' / MODEL_FILE}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pedseg_core.report import write_report

    path = write_report(Path(args.run), Path(args.out) if args.out else None, parse_data_args(args.data) or None)
    print(f"wrote {path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pedseg_core.evaluate.folders import evaluate_folders
    from pedseg_core.evaluate.table import evaluation_table
    from pedseg_core.train.run_dir import write_json

    report = evaluate_folders(Path(args.pred), Path(args.ref), Path(args.labels) if args.labels else None)
    print(evaluation_table(report))
    if args.json:
        write_json(Path(args.json), report)
        print(f"wrote {args.json}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from pedseg_core.audit import read_audit, summarize_audit

    lines, flagged = summarize_audit(read_audit(Path(args.state_dir)))
    print("\n".join(lines))
    return 1 if flagged else 0


def run_options(required: bool) -> argparse.ArgumentParser:
    """The options of a training run: data, run directory and configuration (`federate --resume` needs neither
    data nor a new run directory)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", action="append", required=required, metavar="JOINT=DIR",
                        help="a joint's nnU-Net dataset; repeat for each joint")
    common.add_argument("--out", required=required, metavar="RUN", help="new run directory")
    common.add_argument("--preset", default="small", help="tiny | demo | small | paper")
    common.add_argument("--config", metavar="YAML", help="YAML file overriding the preset")
    common.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one option, e.g. --set train.epochs=5")
    common.add_argument("--mlflow", metavar="URI", help="also log to this MLflow tracking server or store (a local "
                        "folder or file: URI works offline; default: TensorBoard in RUN/tensorboard/ only)")
    return common


def mlflow_settings(uri: str | None) -> list[str]:
    """--mlflow URI -> the `tracking.mlflow_uri` override; a folder or relative file: URI made absolute (a
    federation's ServerApp runs in another working directory), spaces encoded."""
    if not uri:
        return []
    scheme = urlparse(uri).scheme
    if uri != "databricks" and (not scheme or scheme == "file" and not uri.startswith("file:///")):
        uri = Path(uri.removeprefix("file:")).resolve().as_uri()
    return [f"tracking.mlflow_uri={uri}"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands that need no Flower: data, train, predict, adapt, report, evaluate, audit."""
    data = sub.add_parser("data", help="synthesize, check or look at datasets").add_subparsers(
        dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic pediatric joint MRI datasets (nnU-Net v2 raw)")
    synth.add_argument("out", help="output folder; one dataset per joint is written at OUT/<joint>/")
    synth.add_argument("--joints", default="ankle,knee,shoulder", help="comma-separated joints")
    synth.add_argument("--train", type=int, default=12, help="training cases per joint")
    synth.add_argument("--test", type=int, default=4, help="test cases per joint")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)
    check = data.add_parser("check", help="validate nnU-Net v2 raw datasets (exit 2 on problems)")
    check.add_argument("dirs", nargs="+", metavar="DIR")
    check.set_defaults(func=cmd_check)
    dicom = data.add_parser("import-dicom", help="DICOM MR series -> an nnU-Net dataset of images (imagesTs/) with "
                            "their geometry; no DICOM tag is copied (exit 2 and one line per bad series)")
    dicom.add_argument("dicom_dir", metavar="DICOM_DIR", help="a folder searched recursively for DICOM series")
    dicom.add_argument("out", metavar="OUT", help="the dataset folder to write")
    dicom.add_argument("--joint", required=True, help="the series' joint (ankle, knee, shoulder): its labels go "
                       "into dataset.json")
    dicom.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    dicom.set_defaults(func=cmd_import_dicom)
    montage = data.add_parser("montage", help="PNG with one labeled slice per dataset, for a visual check")
    montage.add_argument("dirs", nargs="+", metavar="DIR")
    montage.add_argument("--out", required=True, help="PNG file to write")
    montage.set_defaults(func=cmd_montage)

    common = run_options(required=True)

    train = sub.add_parser("train", parents=[common], help="centralized training")
    train.add_argument("--scheme", default="multi-domain", choices=SCHEMES)
    train.set_defaults(func=cmd_train)

    audit = sub.add_parser("audit", help="what left a site, per run and round, from STATE_DIR/audit.jsonl; exit 1 "
                           "when an image-sized array or per-case metrics left it")
    audit.add_argument("state_dir", metavar="STATE_DIR", help="a site's state directory (pedseg-client --state-dir)")
    audit.set_defaults(func=cmd_audit)

    predict = sub.add_parser("predict", help="label volumes for images, in the images' own geometry")
    predict.add_argument("--checkpoint", required=True, metavar="CKPT")
    predict.add_argument("--joint", required=True, help="which domain of the model to use")
    predict.add_argument("--input", required=True, metavar="DIR|FILE")
    predict.add_argument("--out", required=True, metavar="DIR")
    predict.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    predict.add_argument("--meshes", action="store_true", help="also one STL surface mesh per bone and case in "
                         "OUT/meshes/ (scanner coordinates in mm, LPS as 3D Slicer reads them)")
    predict.add_argument("--keep-all-components", action="store_true",
                         help="no post-processing (default: each bone keeps its largest 3D connected components, "
                         "stray islands removed)")
    predict.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one) | cpu | cuda:N")
    predict.set_defaults(func=cmd_predict)

    report = sub.add_parser("report", help="one self-contained HTML page of a federated, centralized or "
                            "reproduction run: Dice per round, box plots, overlays, timeline, configuration")
    report.add_argument("run", metavar="RUN", help="a run or reproduction folder")
    report.add_argument("--out", metavar="FILE", help="the HTML file to write (default: RUN/report.html, replaced)")
    report.add_argument("--data", action="append", default=[], metavar="JOINT=DIR",
                        help="where the test images are, for the overlays of a run that did not record it "
                             "(`pedseg train`); repeat for each joint")
    report.set_defaults(func=cmd_report)

    adapt = sub.add_parser("adapt", help="a model for a hospital that did not take part: the federation's shared "
                           "filters plus a few labelled cases of its joint train its own norms and head")
    adapt.add_argument("--weights", required=True, metavar="GLOBAL_FINAL.pt",
                       help="the federation's shared weights (a federated RUN/checkpoints/global_final.pt)")
    adapt.add_argument("--joint", required=True, help="the new site's joint (ankle, knee, shoulder)")
    adapt.add_argument("--data", required=True, metavar="DIR", help="the new site's nnU-Net dataset (its labelled "
                       "training cases train; its labelsTs, or a held-out part of its training cases, evaluate)")
    adapt.add_argument("--out", required=True, metavar="RUN", help="a new run folder: config.yaml, metrics.jsonl, "
                       "results.json, checkpoints/final.pt")
    adapt.add_argument("--site", help="the new domain's name in the checkpoint (default: the joint)")
    adapt.add_argument("--cases", type=int, metavar="N", help="train on the first N training cases only")
    adapt.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    adapt.add_argument("--fine-tune-shared", action="store_true",
                       help="also fine-tune the shared filters (default: frozen; only the norms and head train)")
    adapt.set_defaults(func=cmd_adapt)

    evaluate = sub.add_parser("evaluate", help="Dice, HD95 and ASSD per case and bone")
    evaluate.add_argument("--pred", required=True, metavar="DIR")
    evaluate.add_argument("--ref", required=True, metavar="DIR")
    evaluate.add_argument("--labels", metavar="DATASET_JSON",
                          help="dataset.json naming the labels (default: next to --ref)")
    evaluate.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    evaluate.set_defaults(func=cmd_evaluate)
