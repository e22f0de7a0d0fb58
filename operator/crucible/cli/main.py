"""The `crucible` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _crds(args: argparse.Namespace) -> int:
    from crucible.api.crd import write_crds

    for directory in filter(None, (args.output, args.chart)):
        for path in write_crds(Path(directory)):
            print(path)
    return 0


def _dashboards(args: argparse.Namespace) -> int:
    from crucible.metrics.dashboards import write_dashboards

    for path in write_dashboards(Path(args.output)):
        print(path)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from crucible.cli.operator import run_operator

    return run_operator(namespaces=args.namespace, cluster_wide=args.all_namespaces)


def _dev_up(args: argparse.Namespace) -> int:
    from crucible.cli.dev import dev_up

    return dev_up(
        Path(args.workdir),
        Path(args.examples),
        args.namespace,
        once=args.once,
        timeout=args.timeout,
    )


def _dev_images(args: argparse.Namespace) -> int:
    from crucible.devcluster.images import build_images

    build_images(args.image)
    return 0


def _status(args: argparse.Namespace) -> int:
    from crucible.cli.status import custom_objects, list_resources, status_table

    print(status_table(list_resources(custom_objects(args.kubeconfig), args.namespace)))
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from crucible.cli.status import custom_objects, leaderboard_table, list_resources

    items = list_resources(custom_objects(args.kubeconfig), args.namespace)
    print(leaderboard_table([i for i in items if args.evalrun in (None, i["metadata"]["name"])]))
    return 0


def _report(args: argparse.Namespace) -> int:
    from crucible.cli.report import write_report

    store = Path(args.store) if args.store else None
    output = Path(args.output) if args.output else None
    print(write_report(args.run, args.namespace, output, args.kubeconfig, store))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crucible", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="generate the CRD manifests from the API types")
    crds.add_argument("-o", "--output", default="crds", help="directory to write (default: crds)")
    crds.add_argument(
        "--chart", default="charts/crucible/crds", help="the chart's copy (empty: none)"
    )
    crds.set_defaults(func=_crds)

    dashboards = commands.add_parser(
        "dashboards", help="generate the Grafana dashboards (needs the dev extra)"
    )
    dashboards.add_argument(
        "-o", "--output", default="charts/crucible/dashboards", help="directory to write"
    )
    dashboards.set_defaults(func=_dashboards)

    operator = commands.add_parser("operator", help="run the operator")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", default=[], help="watch this namespace (repeatable)"
    )
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace")
    operator.set_defaults(func=_operator)

    dev = commands.add_parser("dev", help="a local development environment")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_commands.add_parser(
        "up",
        help="start the local cluster (a control plane and a real node), install Crucible with "
        "its Helm chart from the images `make images` built, apply the examples",
    )
    up.add_argument("--workdir", default=".dev", help="state and logs (default: .dev)")
    up.add_argument(
        "--examples",
        default="examples/quickstart",
        help="manifests (or a kustomization) to apply (default: examples/quickstart)",
    )
    up.add_argument("--namespace", default="crucible-demo", help="namespace of the examples")
    up.add_argument(
        "--once",
        action="store_true",
        help="stop once every resource has succeeded or failed (exit 1 if any failed)",
    )
    up.add_argument(
        "--timeout", type=float, default=1800, help="with --once, give up after this many seconds"
    )
    up.set_defaults(func=_dev_up)
    images = dev_commands.add_parser(
        "images",
        help="build the images (buildah, on a Debian base made here) and push them to the "
        "local registry",
    )
    images.add_argument("image", nargs="*", help="only these (default: all)")
    images.set_defaults(func=_dev_images)

    for name, func, what in (
        ("status", _status, "each resource's phase and progress"),
        (
            "leaderboard",
            _leaderboard,
            "accuracy per model (CI95 over questions, stddev over rounds, scoring), paired tests",
        ),
    ):
        command = commands.add_parser(name, help=what)
        command.add_argument("-n", "--namespace", default="crucible-demo", help="namespace")
        command.add_argument(
            "--kubeconfig", help="default: $KUBECONFIG, else the one `crucible dev up` wrote"
        )
        if name == "leaderboard":
            command.add_argument("evalrun", nargs="?", help="only this EvalRun")
        command.set_defaults(func=func)
    report = commands.add_parser(
        "report", help="an EvalRun's or an Experiment's results as one self-contained HTML file"
    )
    report.add_argument("run", help="evalrun/NAME or experiment/NAME")
    report.add_argument("-n", "--namespace", default="crucible-demo", help="namespace")
    report.add_argument("-o", "--output", help="file to write (default: <kind>-<name>.html)")
    report.add_argument(
        "--store",
        help="the model store's folder, for the per-question grid (default: .dev/store, "
        "where `crucible dev up` keeps it)",
    )
    report.add_argument(
        "--kubeconfig", help="default: $KUBECONFIG, else the one `crucible dev up` wrote"
    )
    report.set_defaults(func=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
