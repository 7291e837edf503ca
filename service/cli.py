"""The ``gradbook`` command: ``gradbook serve`` (``make serve``), ``gradbook serve
NOTEBOOK …`` (any notebooks, with nothing of gradbook's API) and ``gradbook cluster``
(``make cluster``).

Every setting of ``Settings`` is a flag of both commands (``max_batch`` is ``--max-batch``;
on/off settings are ``--allow-open`` / ``--no-allow-open``), with its ``GRADBOOK_*`` variable
and default in its help. A flag wins over its variable: the command writes what it was given
into the variable, so the gateway, its kernels and the training worker, which all read the
environment, see the same value. Then every setting is read once: a value the service cannot
use is one line naming the flag (or the variable) and what it allows, and exit status 2, as a
port that is taken is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gradbook_service.app import cluster, launch
from gradbook_service.app.settings import Settings
from gradbook_service.gateway import launch as gateway_launch
from gradbook_service.gateway.settings import GatewaySettings, SettingError
from traitlets import Bool

import gradbook

USAGE_ERROR = 2  # what argparse and most commands exit with for a bad command line

# The settings people change at a command line, shown first; the others follow.
COMMON = ("host", "port", "kernels", "token", "allow_open", "reload")
CLUSTER_FLAGS = {  # the cluster's own settings: flag, variable, what it allows, default
    "replicas": (cluster.REPLICAS, "Replicas behind the balancer", 2),
    "pg_port": (cluster.PG_PORT, "Port of the cluster's own PostgreSQL (unless --store is a "
                "postgresql:// URL, used as it is)", cluster.DEFAULT_PG_PORT),
    "cluster_dir": (cluster.CLUSTER_DIR, "Folder of the cluster's PostgreSQL data, password "
                    "file and logs", str(cluster.STATE)),
}


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_settings(parser: argparse.ArgumentParser) -> None:
    common = parser.add_argument_group("the service")
    others = parser.add_argument_group("limits and tuning")
    api = parser.add_argument_group("gradbook's API (not used when serving NOTEBOOKs)")
    traits = Settings.class_traits(config=True)
    gateway = set(GatewaySettings.class_trait_names(config=True))
    for name in (*COMMON, *sorted(set(traits) - set(COMMON))):
        trait = traits[name]
        group = common if name in COMMON else others if name in gateway else api
        if isinstance(trait, Bool):
            group.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=trait.help)
        else:
            text = trait.help + (" Every user of this machine can read it in the process "
                                 "list: prefer --token-file." if name == "token" else "")
            group.add_argument(flag(name), dest=name, metavar=name.upper(), help=text)
    common.add_argument(
        "--token-file", metavar="FILE",
        help="Read the token from the first line of FILE (keep it private to you)")


def build_parser() -> Parser:
    parser = Parser(
        prog="gradbook",
        description="Serve Jupyter notebooks' annotated cells as REST services on pools of "
                    "kernels: gradbook's own API with its models, or notebooks of yours.")
    parser.add_argument("--version", action="version", version=f"gradbook {gradbook.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    serve = commands.add_parser(
        "serve", help="serve gradbook's REST API (what `make serve` runs), or NOTEBOOKs",
        description="Without NOTEBOOK: serve gradbook's REST API from its notebook on a pool of "
                    "kernels, with the store's models (trained on the first start). With "
                    "NOTEBOOKs: serve their cells annotated '# METHOD /path' and nothing else, "
                    "each notebook on its own pool seeded with its other cells; one notebook "
                    "at the paths it annotates, several (or a FOLDER's) each under /<name>. "
                    "Ctrl-C stops it.")
    serve.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                       help="a notebook (.ipynb) or a folder of notebooks to serve")
    add_settings(serve)
    cluster_parser = commands.add_parser(
        "cluster", help="several replicas behind HAProxy over one PostgreSQL store "
                        "(what `make cluster` runs)",
        description="Start PostgreSQL, several replicas of the service and HAProxy in front "
                    "of them on --host:--port (the replicas on the next ports). Every setting "
                    "below is passed to each replica. Ctrl-C stops everything.")
    own = cluster_parser.add_argument_group("the cluster")
    for name, (env, text, default) in CLUSTER_FLAGS.items():
        own.add_argument(flag(name), dest=name, metavar=name.upper(),
                         help=f"{text} ({env}, default {default}).")
    add_settings(cluster_parser)
    return parser


def apply(arguments: argparse.Namespace) -> dict[str, str]:
    """Write each flag given into its variable; answer the variables so set, with their flags."""
    given: dict[str, str] = {}
    variables = {name: Settings.env(name) for name in Settings.class_trait_names(config=True)}
    variables |= {name: env for name, (env, _, _) in CLUSTER_FLAGS.items()}
    if getattr(arguments, "token_file", None):
        try:
            with open(arguments.token_file, encoding="utf-8") as file:
                arguments.token = file.readline().strip()
        except OSError as err:
            raise SettingError("token", "--token-file", arguments.token_file,
                               f"a readable file ({err.strerror})") from None
        if not arguments.token:
            raise SettingError("token", "--token-file", arguments.token_file,
                               "a file whose first line is the token")
    for name, env in variables.items():
        value = getattr(arguments, name, None)
        if value is None:
            continue
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif value == "":
            raise SettingError(name, flag(name), value, "a value (or leave the flag out)")
        os.environ[env] = value
        given[env] = flag(name)
    return given


def check(command: str, given: dict[str, str]) -> None:
    """Read every setting once; a bad one is a ``SettingError`` naming its flag if it had one."""
    try:
        Settings().check()
        if command == "cluster":
            cluster.cluster_settings()
    except SettingError as err:
        raise SettingError(err.name, given.get(err.env, err.env), err.value,
                           err.allowed) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    if arguments.command is None:
        parser.print_help(sys.stderr)
        return USAGE_ERROR
    prog = f"gradbook {arguments.command}"
    try:
        check(arguments.command, apply(arguments))
    except SettingError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return USAGE_ERROR
    notebooks = [Path(path) for path in getattr(arguments, "notebooks", [])]
    if notebooks:
        gateway_launch.main(notebooks)
        return 0
    run: Callable[[], int | None] = launch.main if arguments.command == "serve" else cluster.main
    return run() or 0


if __name__ == "__main__":
    sys.exit(main())
