"""`pedseg predict`: label volumes (and optionally surface meshes) for images, in the images' own geometry."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pedseg_core.errors import PedsegError
from pedseg_core.names import check_name

if TYPE_CHECKING:  # torch and the model load only when the command runs
    from pedseg_core.config import PedsegConfig
    from pedseg_core.model.checkpoint import DomainSpec
    from pedseg_core.model.unet import MultiDomainUNet


def predict(args: argparse.Namespace) -> int:
    from pedseg_core.device import resolve_device
    from pedseg_core.evaluate.predict import MESHES_FOLDER, list_images, predict_files
    from pedseg_core.model.checkpoint import find_domain

    check_name(args.joint, "joint", "--joint")
    checkpoint = Path(args.checkpoint)
    model, cfg, domains = load_model(checkpoint)
    model.to(resolve_device(args.device))
    domain = find_domain(domains, args.joint, checkpoint)
    images = list_images(Path(args.input))
    outputs, meshes = predict_files(model, domain, images, Path(args.out), cfg.data, cfg.eval.batch_size,
                                    overwrite=args.overwrite, largest_component=not args.keep_all_components,
                                    mesh_bones=domains[domain].bones if args.meshes else None,
                                    min_fraction=cfg.eval.component_min_fraction)
    print(f"wrote {len(outputs)} label volume(s) to {args.out}")
    if args.meshes and meshes:
        print(f"wrote {len(meshes)} surface mesh(es) (STL, scanner LPS mm, one per predicted bone and case) to "
              f"{Path(args.out) / MESHES_FOLDER}")
    elif args.meshes:
        print(f"no surface mesh written: the model predicted no bone in {len(outputs)} case(s)")
    return 0


def load_model(checkpoint: Path) -> tuple[MultiDomainUNet, PedsegConfig, list[DomainSpec]]:
    """The model of a checkpoint; given a federation's shared weights instead, where the sites' models are."""
    from pedseg_core.model.checkpoint import SHARED_FORMAT, load_checkpoint
    from pedseg_core.torch_files import load_torch_file

    try:
        return load_checkpoint(checkpoint)
    except PedsegError:
        payload = load_torch_file(checkpoint, "checkpoint")
        if not (isinstance(payload, dict) and payload.get("format") == SHARED_FORMAT):
            raise
    raise PedsegError(f"--checkpoint {checkpoint}: the federation's shared weights, not a model; each site's "
                      f"personalized model is {site_models(checkpoint)} (or `pedseg adapt --checkpoint {checkpoint}` "
                      "makes one for a hospital that did not take part)")


def site_models(shared_weights: Path) -> str:
    """Where the sites' models of the run that wrote `shared_weights` (RUN/checkpoints/global_final.pt) are."""
    from simulations.site_dirs import personalized_models

    run = shared_weights.resolve().parent.parent
    found = personalized_models(run) if run.is_dir() else {}
    if found:
        return ", ".join(f"{path} ({site})" for site, path in found.items())
    return "STATE_DIR/run-<id>/model.pt in the site's state directory (RUN/sites/<site>/run-<id>/model.pt in a " \
           "--local run)"


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="label volumes for images, in the images' own geometry",
                            description="One label volume per image (same shape and affine), from a site's model.")
    parser.add_argument("--checkpoint", required=True, metavar="MODEL.pt",
                        help="a model: a site's personalized STATE_DIR/run-<id>/model.pt, a centralized "
                             "RUN/checkpoints/final.pt or an adapted one")
    parser.add_argument("--joint", required=True, help="which domain of the model to use (a site or joint name)")
    parser.add_argument("--input", required=True, metavar="DIR|FILE", help="a NIfTI image or a folder of them "
                        "(e.g. DATASET/imagesTs)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder for the label volumes")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: refuse)")
    parser.add_argument("--meshes", action="store_true", help="also one STL surface mesh per bone and case in "
                        "OUT/meshes/ (scanner coordinates in mm, LPS as 3D Slicer reads them)")
    parser.add_argument("--keep-all-components", action="store_true",
                        help="no post-processing (default: each bone keeps its largest 3D connected components, "
                        "stray islands removed)")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one) | cpu | cuda:N")
    parser.set_defaults(func=predict)
