"""`pedseg data`: synthesize, check, import or look at nnU-Net v2 raw datasets."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pedseg.options import whole_number
from pedseg_core.errors import EXIT_USER_ERROR
from pedseg_core.names import check_name


def synth(args: argparse.Namespace) -> int:
    from pedseg_core.data.synth import synthesize

    joints = [check_name(j.strip(), "joint", "--joints") for j in args.joints.split(",") if j.strip()]
    written = synthesize(Path(args.out), joints, args.train, args.test, args.seed)
    for joint, path in written.items():
        print(f"{joint}: {path}  ({args.train} training, {args.test} test cases)")
    return 0


def import_dicom(args: argparse.Namespace) -> int:
    from pedseg_core.data.dicom_import import import_dicom as import_series

    check_name(args.joint, "joint", "--joint")
    report = import_series(Path(args.dicom_dir), Path(args.out), args.joint, overwrite=args.overwrite)
    print(report.summary())
    print(f"predict with: pedseg predict --input {Path(args.out) / 'imagesTs'} --joint {args.joint} ...")
    return 0


def check(args: argparse.Namespace) -> int:
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


def montage(args: argparse.Namespace) -> int:
    from pedseg_core.data.montage import save_montage

    save_montage([Path(d) for d in args.dirs], Path(args.out))
    print(f"wrote {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="synthesize, check or look at datasets",
                          description="Synthesize, check, import or look at nnU-Net v2 raw datasets.")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="{synth,check,import-dicom,montage}")
    synth_parser = commands.add_parser("synth", help="write synthetic pediatric joint MRI datasets (nnU-Net v2 raw)")
    synth_parser.add_argument("out", metavar="OUT", help="a new or empty folder; one dataset per joint is written "
                              "at OUT/<joint>/")
    synth_parser.add_argument("--joints", default="ankle,knee,shoulder", help="comma-separated joints")
    synth_parser.add_argument("--train", type=whole_number(1), default=12, help="training cases per joint")
    synth_parser.add_argument("--test", type=whole_number(0), default=4, help="test cases per joint")
    synth_parser.add_argument("--seed", type=whole_number(0), default=0, help="the same seed writes the same data")
    synth_parser.set_defaults(func=synth)
    check_parser = commands.add_parser("check", help="validate nnU-Net v2 raw datasets (exit 2 on problems)")
    check_parser.add_argument("dirs", nargs="+", metavar="DIR", help="a dataset folder (with dataset.json); "
                              "`data synth OUT` wrote one per joint: OUT/ankle, OUT/knee, ...")
    check_parser.set_defaults(func=check)
    dicom = commands.add_parser("import-dicom", help="DICOM MR series -> an nnU-Net dataset of images (imagesTs/) "
                                "with their geometry; no DICOM tag is copied (exit 2 and one line per bad series)")
    dicom.add_argument("dicom_dir", metavar="DICOM_DIR", help="a folder searched recursively for DICOM series")
    dicom.add_argument("out", metavar="OUT", help="the dataset folder to write")
    dicom.add_argument("--joint", required=True, help="the series' joint (ankle, knee, shoulder): its labels go "
                       "into dataset.json")
    dicom.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    dicom.set_defaults(func=import_dicom)
    montage_parser = commands.add_parser("montage", help="PNG with one labeled slice per dataset, for a visual check")
    montage_parser.add_argument("dirs", nargs="+", metavar="DIR", help="a dataset folder (with dataset.json)")
    montage_parser.add_argument("--out", required=True, metavar="PNG", help="the PNG file to write (replaced)")
    montage_parser.set_defaults(func=montage)
