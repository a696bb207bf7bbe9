"""`pedseg predict`: label volumes (and optionally surface meshes) for images, in the images' own geometry."""

from __future__ import annotations

import argparse
from pathlib import Path


def predict(args: argparse.Namespace) -> int:
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


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("predict", help="label volumes for images, in the images' own geometry")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT")
    parser.add_argument("--joint", required=True, help="which domain of the model to use")
    parser.add_argument("--input", required=True, metavar="DIR|FILE")
    parser.add_argument("--out", required=True, metavar="DIR")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--meshes", action="store_true", help="also one STL surface mesh per bone and case in "
                        "OUT/meshes/ (scanner coordinates in mm, LPS as 3D Slicer reads them)")
    parser.add_argument("--keep-all-components", action="store_true",
                        help="no post-processing (default: each bone keeps its largest 3D connected components, "
                        "stray islands removed)")
    parser.add_argument("--device", default="auto", help="auto (a CUDA GPU when torch sees one) | cpu | cuda:N")
    parser.set_defaults(func=predict)
