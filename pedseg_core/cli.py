"""The `pedseg` command: data synthesis and checks, centralized training, prediction, evaluation."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from pedseg_core import __version__
from pedseg_core.config import FEDERATED_SCHEMES, SCHEMES, load_yaml, parse_overrides
from pedseg_core.errors import DatasetError, PedsegError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
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


def cmd_federate(args: argparse.Namespace) -> int:
    import importlib

    if not (args.local or args.simulation or args.resume):
        raise PedsegError("choose --local (a SuperLink and one SuperNode per site on 127.0.0.1) or --simulation "
                          "(Flower's simulation engine); for a deployment across hosts see deploy/README.md")
    if args.resume:
        if args.data or args.out or args.policy:
            raise PedsegError("--resume RUN continues with the run's own sites, directory and policy: drop "
                              "--data/--out/--policy")
        results = importlib.import_module("simulations.local").resume_local(Path(args.resume))
        return _report_federation(results, Path(args.resume))
    if not (args.data and args.out):
        raise PedsegError("federate needs --data (one per site) and --out RUN")
    pairs = flatten_options(load_yaml(Path(args.config))) if args.config else []
    overrides = [*pairs, *args.set, *mlflow_settings(args.mlflow)]
    app_config = {"preset": args.preset, "scheme": args.scheme, "strategy": args.strategy,
                  "num-server-rounds": args.rounds or 0, "overrides": " ".join(overrides)}
    if args.min_sites is not None:
        app_config["min-nodes"] = args.min_sites
    if args.secure_aggregation:
        app_config["secure-aggregation"] = True
    sites, joints = parse_site_args(args.data)
    if (args.ray_address or args.gpus_per_site) and not args.simulation:
        raise PedsegError("--ray-address and --gpus-per-site are options of --simulation")
    # The Flower orchestration lives outside pedseg_core (which never imports Flower code).
    if args.simulation:
        simulation = importlib.import_module("simulations.simulation")
        results = simulation.federate_simulation(sites, Path(args.out), app_config, joints=joints,
                                                 sites_per_joint=args.sites_per_joint,
                                                 cpus_per_site=args.cpus_per_site, insecure=args.insecure,
                                                 policy=Path(args.policy) if args.policy else None,
                                                 ray_address=args.ray_address, gpus_per_site=args.gpus_per_site)
    else:
        local = importlib.import_module("simulations.local")
        results = local.federate_local(sites, Path(args.out), app_config, joints=joints, threads=args.threads,
                                       insecure=args.insecure, policy=Path(args.policy) if args.policy else None)
    return _report_federation(results, Path(args.out))


def _report_federation(results: dict, out: Path) -> int:
    from pedseg_core.evaluate.table import results_table

    print(results_table(results))
    for model in sorted((out / "sites").glob("*/run-*/model.pt")):  # RUN was empty: one run per site
        print(f"personalized model of {model.parents[1].name}: {model}")
    print(f"run directory: {out}")
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


def cmd_reproduce(args: argparse.Namespace) -> int:
    import importlib

    pairs = flatten_options(load_yaml(Path(args.config))) if args.config else []
    # The Flower orchestration lives outside pedseg_core (which never imports Flower code).
    reproduction = importlib.import_module("simulations.reproduce")
    cells = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else None
    content = reproduction.reproduce(parse_data_args(args.data), Path(args.out), args.preset, args.folds,
                                     [*pairs, *args.set], cells)
    print("\n" + (Path(args.out) / "results.md").read_text(encoding="utf-8"))
    failed = [c["claim"] for c in content["acceptance"] if not c["met"]]
    print(f"reproduction folder: {args.out}" + (f"  (claims not met: {'; '.join(failed)})" if failed else ""))
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pedseg", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pedseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

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

    common, federate_common = (run_options(required) for required in (True, False))

    train = sub.add_parser("train", parents=[common], help="centralized training")
    train.add_argument("--scheme", default="multi-domain", choices=SCHEMES)
    train.set_defaults(func=cmd_train)

    federate = sub.add_parser("federate", parents=[federate_common], help="federated training on Flower; --data takes "
                              "JOINT=DIR or SITE:JOINT=DIR (several sites may hold one joint)")
    mode = federate.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="SuperLink and SuperNodes on 127.0.0.1")
    mode.add_argument("--simulation", action="store_true", help="Flower's simulation engine (Ray, 127.0.0.1)")
    mode.add_argument("--resume", metavar="RUN", help="continue a stopped or killed --local run from its last "
                      "completed round, with its own sites, data and settings")
    federate.add_argument("--sites-per-joint", type=int, default=1,
                          help="simulation: split each joint's training cases into K sites")
    federate.add_argument("--cpus-per-site", type=int, default=1,
                          help="simulation: CPU cores Ray reserves for each virtual site")
    federate.add_argument("--ray-address", metavar="HOST:PORT",
                          help="simulation: run the virtual sites on this existing Ray cluster (its head's address) "
                               "instead of a private Ray on this machine; see docs/ray-cluster.md")
    federate.add_argument("--gpus-per-site", type=float, default=0.0,
                          help="simulation on a Ray cluster: GPUs Ray reserves for each virtual site (e.g. 0.25)")
    federate.add_argument("--rounds", type=int)
    federate.add_argument("--strategy", choices=("fedavg", "fedprox"), default="fedavg")
    federate.add_argument("--threads", type=int, default=0,
                          help="torch threads per site (0 = cores / sites, at least 1)")
    federate.add_argument("--scheme", default="full", choices=FEDERATED_SCHEMES)
    federate.add_argument("--min-sites", type=int, metavar="K",
                          help="the quorum: a round starts once K sites are connected, and the run goes on while "
                               "K remain (default: every site with a valid dataset)")
    federate.add_argument("--secure-aggregation", action="store_true",
                          help="SecAgg+: the server learns only the mean of the sites' shared weights (at least 3 "
                               "sites; per-site update checks and robust aggregation are off)")
    federate.add_argument("--policy", metavar="POLICY.yaml",
                          help="every site's privacy policy (default: the safe one: no per-case metrics leave; "
                               "a simulation, on your own data, allows them)")
    federate.add_argument("--insecure", action="store_true",
                          help="no TLS and no SuperNode authentication (default: both, with a private CA and one "
                               "key per site in RUN/pki/)")
    federate.set_defaults(func=cmd_federate)

    audit = sub.add_parser("audit", help="what left a site, per run and round, from STATE_DIR/audit.jsonl; exit 1 "
                           "when an image-sized array or per-case metrics left it")
    audit.add_argument("state_dir", metavar="STATE_DIR", help="a site's state directory (pedseg-client --state-dir)")
    audit.set_defaults(func=cmd_audit)

    repro = sub.add_parser("reproduce", help="the paper's ablation table, centralized and federated (Flower "
                           "simulation), on identical splits, with paired tests and plots; a re-run resumes")
    repro.add_argument("--data", action="append", required=True, metavar="JOINT=DIR",
                       help="a joint's nnU-Net dataset; repeat for each joint")
    repro.add_argument("--out", required=True, metavar="DIR", help="reproduction folder (a re-run resumes it)")
    repro.add_argument("--preset", default="small", help="tiny | demo | small | paper")
    repro.add_argument("--folds", type=int, default=1,
                       help="K > 1: K-fold cross-validation over the training cases; 1: the labelsTs split")
    repro.add_argument("--cells", help="comma-separated subset of cells, e.g. centralized-full,"
                       "federated-full-fedavg (default: all 13)")
    repro.add_argument("--config", metavar="YAML", help="YAML file overriding the preset")
    repro.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one option in every cell, e.g. --set train.epochs=5")
    repro.set_defaults(func=cmd_reproduce)

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
    return parser


def report_error(err: PedsegError, prog: str = "pedseg") -> None:
    """One line per problem on stderr, no traceback."""
    lines = err.problems if isinstance(err, DatasetError) else str(err).splitlines()
    for line in lines:
        print(f"{prog}: error: {line}", file=sys.stderr)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # a service stop cleans up like Ctrl-C
    try:
        return args.func(args)
    except PedsegError as err:
        report_error(err)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("pedseg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
