"""`python -m mlflow_cv_yolo` (or `cv-yolo`): one subcommand, one small function."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def _dataset_build(args: argparse.Namespace) -> int:
    from mlflow_cv_yolo.data.build import DatasetError, build_dataset

    try:
        build_dataset(
            args.source,
            args.out,
            args.yaml,
            counts=(args.train, args.val, args.test),
            imgsz=args.imgsz,
            seed=args.seed,
            cache_dir=args.cache_dir,
            style=args.style,
        )
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _add_dataset(commands: argparse._SubParsersAction) -> None:
    dataset = commands.add_parser("dataset", help="build the tiny COCO person dataset")
    actions = dataset.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="build data/tiny_coco and its yaml from a source",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument(
        "--source",
        default="auto",
        help="auto (COCO128 if cached or downloadable, else the real COCO person cut shipped in "
        "data/coco_persons, else synthetic), coco128, coco_persons, synthetic, "
        "or a path to a YOLO-format folder or zip; explicit sources never fall back",
    )
    build.add_argument("--out", type=Path, default=Path("data/tiny_coco"), help="dataset folder to write")
    build.add_argument("--yaml", type=Path, default=Path("data/tiny_coco.yaml"), help="dataset yaml to write")
    build.add_argument("--train", type=_count, default=40, help="train images")
    build.add_argument("--val", type=_count, default=10, help="validation images")
    build.add_argument("--test", type=_count, default=10, help="test images")
    build.add_argument("--imgsz", type=_count, default=320, help="side of the square images written, pixels")
    build.add_argument("--seed", type=int, default=0, help="seed of the split (and of the synthetic set)")
    build.add_argument("--cache-dir", type=Path, default=Path("data/.cache"), help="where coco128.zip is cached")
    build.add_argument(
        "--style",
        default="standard",
        help="synthetic source only: the generator's difficulty (standard, pretrain, heldout)",
    )
    build.set_defaults(func=_dataset_build)


def _checkpoint_build(args: argparse.Namespace) -> int:
    from mlflow_cv_yolo.train.pretrain import build_checkpoint

    if not args.data.is_file():
        print(f"error: --data {args.data}: dataset yaml not found", file=sys.stderr)
        return 1
    build_checkpoint(
        args.data,
        args.out,
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        lr0=args.lr0,
        seed=args.seed,
        threads=args.threads,
    )
    return 0


def _add_checkpoint(commands: argparse._SubParsersAction) -> None:
    checkpoint = commands.add_parser("checkpoint", help="train the project's own pretrained checkpoint")
    actions = checkpoint.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser(
        "build",
        help="train yolov8n.yaml on a dataset and keep its best weights",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    build.add_argument("--data", type=Path, required=True, help="dataset yaml to train on")
    build.add_argument("--out", type=Path, required=True, help="checkpoint (.pt) to write")
    build.add_argument("--epochs", type=_count, default=30, help="training epochs")
    build.add_argument("--imgsz", type=_count, default=64, help="training image size, pixels")
    build.add_argument("--batch", type=_count, default=8, help="batch size")
    build.add_argument("--lr0", type=float, default=0.01, help="initial learning rate (SGD)")
    build.add_argument("--seed", type=int, default=0, help="training seed")
    # A fixed thread count keeps the float reductions, hence the bytes, the same from run to run.
    build.add_argument("--threads", type=_count, default=2, help="torch threads")
    build.set_defaults(func=_checkpoint_build)


def _ui(args: argparse.Namespace) -> int:
    from mlflow_cv_yolo.stack import ServiceError, make_stack
    from mlflow_cv_yolo.stack.claim import StackInUse, claim, holder, in_use, serving
    from mlflow_cv_yolo.train import interrupts

    # SIGTERM too becomes a KeyboardInterrupt, so that `with stack` stops every
    # service (they run in their own sessions: no signal reaches them otherwise).
    interrupts.install()
    stack = make_stack(args.stack, args.stack_dir)
    if args.stack in ("embedded", "local") and not stack.state_dir.is_dir():
        print(f"error: {stack.state_dir} does not exist: run the suite first", file=sys.stderr)
        return 1
    where = f"the {args.stack} stack in {args.stack_dir}"
    live = holder(stack.state_dir)
    if live is not None:  # its server, read-only: starting ours would stop its services
        url = serving(stack.state_dir, live)
        if url is None:
            print(f"error: {in_use(stack.state_dir, live)}, whose server is not up yet: try again", file=sys.stderr)
            return 1
        print(f"MLflow UI on {where}, served by {live.get('what')} (pid {live['pid']}): {url}", flush=True)
        print("(read-only here: it stops when that process ends; `ui` then starts its own)", flush=True)
        return 0
    try:
        held = claim(stack.state_dir, session=None, what="`ui` (python -m mlflow_cv_yolo ui)")
    except StackInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        with stack as info:
            print(f"MLflow UI on {where}: {info.tracking_uri} (Ctrl-C stops it)", flush=True)
            threading.Event().wait()
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        held.release()
    return 0


def _add_ui(commands: argparse._SubParsersAction) -> None:
    ui = commands.add_parser(
        "ui",
        help="reopen the MLflow UI on a stack the suite kept",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ui.add_argument("--stack", choices=("local", "embedded", "docker"), default="local", help="which kept stack")
    ui.add_argument("--stack-dir", type=Path, default=Path(".stack"), help="the suite's --stack-dir")
    ui.set_defaults(func=_ui)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlflow_cv_yolo", description=__doc__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_dataset(commands)
    _add_checkpoint(commands)
    _add_ui(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
