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

    return dev_up(Path(args.workdir), Path(args.examples), args.namespace, args.once)


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
        "up", help="start the local control plane and operator, apply the examples"
    )
    up.add_argument("--workdir", default=".dev", help="state and logs (default: .dev)")
    up.add_argument("--examples", default="examples/nitro", help="manifests to apply")
    up.add_argument("--namespace", default="crucible-demo", help="namespace of the examples")
    up.add_argument("--once", action="store_true", help="exit after showing the resources")
    up.set_defaults(func=_dev_up)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
