"""``kaggle-relay init DIR``: write a ready relay project from the templates."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kaggle_relay
from kaggle_relay.cli import exitcodes
from kaggle_relay.errors import ConfigError
from kaggle_relay.relay.refs import DatasetRef, KernelRef

# Values in the template files that init replaces; the templates stay valid as they are.
TEMPLATE_OWNER = "relay-user"
TEMPLATE_SLUG = "relay-demo-train"
TEMPLATE_TITLE = "relay demo train"
TEMPLATE_DATASET = "relay-user/relay-demo-handoff"
TEMPLATE_DATASET_TITLE = "relay demo handoff"
TEMPLATE_ACCELERATOR = 'accelerator = "none"'
# The kaggle-relay calls in the Makefile, cron.txt and the systemd unit, replaced by the command that ran init.
TEMPLATE_COMMANDS = ("KAGGLE_RELAY ?= kaggle-relay", "&& kaggle-relay next-day", "ExecStart=/usr/bin/env kaggle-relay")

#: Template files in the order they are written, relative to the project folder.
FILES = (
    "relay.toml",
    "kernel/kernel-metadata.json",
    "kernel/train.py",
    "dataset-metadata.json",
    "Makefile",
    "cron.txt",
    "kaggle-relay.service",
    "kaggle-relay.timer",
)

HELP = f"""Write a relay project into DIR: a training script that resumes with the
runtime, kernel and dataset metadata, relay.toml, a Makefile with next-day,
a cron line and a systemd timer. Asks nothing; existing files are left
alone unless --force is given.

{exitcodes.HELP}"""


def relay_command() -> str:
    """Return the kaggle-relay of this installation as a shell word, so it works without the venv on PATH.

    The entry point beside the running interpreter is used when it exists (a
    venv or pip install); otherwise the interpreter runs the module.
    """
    script = Path(sys.executable).parent / "kaggle-relay"
    if script.is_file():
        return shlex.quote(str(script))
    return f"{shlex.quote(sys.executable)} -m kaggle_relay.cli.main"


@dataclass(frozen=True)
class Names:
    """The identities written into a new project."""

    owner: str
    slug: str
    dataset: str
    accelerator: str

    @property
    def title(self) -> str:
        # Kaggle expects the title to slug back to the kernel id.
        return self.slug.replace("-", " ")

    @property
    def dataset_title(self) -> str:
        return self.dataset.split("/", 1)[1].replace("-", " ")


def templates_dir() -> Path:
    """Return the folder of project templates: inside the package when installed from a wheel, else the checkout's."""
    package = Path(kaggle_relay.__file__).resolve().parent
    installed = package / "templates"
    if installed.is_dir():
        return installed
    # A source checkout or an editable install: the top-level templates/ beside the package.
    return package.parent / "templates"


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "init",
        help="write a ready relay project from templates",
        description=HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="project folder to write (created if missing)")
    parser.add_argument("--owner", default=TEMPLATE_OWNER, help="your Kaggle username (default: %(default)s)")
    parser.add_argument("--slug", default=TEMPLATE_SLUG, help="kernel slug, 5 or more characters (default: %(default)s)")
    parser.add_argument("--dataset", help="handoff dataset as owner/slug (default: OWNER/SLUG-handoff)")
    parser.add_argument(
        "--accelerator",
        default="none",
        help="Kaggle machine_shape: NvidiaTeslaT4, NvidiaL4, TpuV5E8, or none (default: %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite files that already exist")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=run)


def resolve_names(args: argparse.Namespace) -> Names:
    """Validate the identities given on the command line, before anything is written."""
    from kaggle_relay.relay.config import ACCELERATORS

    kernel = KernelRef.parse(f"{args.owner}/{args.slug}")
    dataset = DatasetRef.parse(args.dataset or f"{kernel.owner}/{kernel.slug}-handoff")
    if dataset.version is not None:
        raise ConfigError(f"--dataset {args.dataset}: give owner/slug without a version", field="dataset")
    if args.accelerator not in ACCELERATORS:
        raise ConfigError(
            f"--accelerator {args.accelerator}: unknown machine_shape",
            field="accelerator",
            hint="use one of: " + ", ".join(ACCELERATORS),
        )
    return Names(owner=kernel.owner, slug=kernel.slug, dataset=dataset.id, accelerator=args.accelerator)


def render(name: str, text: str, names: Names, project: Path) -> str:
    """Return one template file with the project's names filled in."""
    text = text.replace(TEMPLATE_DATASET, names.dataset).replace(TEMPLATE_DATASET_TITLE, names.dataset_title)
    text = text.replace(f"{TEMPLATE_OWNER}/{TEMPLATE_SLUG}", f"{names.owner}/{names.slug}")
    text = text.replace(TEMPLATE_TITLE, names.title)
    text = text.replace(TEMPLATE_ACCELERATOR, f'accelerator = "{names.accelerator}"')
    text = text.replace("PROJECT", str(project))
    command = relay_command()
    makefile, cron, unit = TEMPLATE_COMMANDS
    text = text.replace(makefile, f"KAGGLE_RELAY ?= {command}").replace(cron, f"&& {command} next-day")
    text = text.replace(unit, f"ExecStart={command}")
    if name == "kernel/kernel-metadata.json":
        metadata = json.loads(text)
        metadata["enable_gpu"] = names.accelerator.startswith("Nvidia")
        metadata["enable_tpu"] = names.accelerator.startswith("Tpu")
        if names.accelerator != "none":
            metadata["machine_shape"] = names.accelerator
        text = json.dumps(metadata, indent=2) + "\n"
    return text


def write_project(project: Path, names: Names, *, force: bool) -> list[Path]:
    """Write every template into ``project``; raise ConfigError listing existing files unless ``force``."""
    from kaggle_relay.runtime import atomic

    project = project.resolve()
    existing = [name for name in FILES if (project / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{project}: not overwriting existing file(s): {', '.join(existing)}",
            path=str(project),
            hint="choose another DIR, or pass --force to overwrite them",
        )
    written = []
    source = templates_dir()
    for name in FILES:
        text = render(name, (source / name).read_text(encoding="utf-8"), names, project)
        target = project / name
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(target, text)
        written.append(target)
    return written


def run(args: argparse.Namespace) -> int:
    names = resolve_names(args)
    written = write_project(args.dir, names, force=args.force)
    project = args.dir.resolve()
    if args.json:
        result = {"dir": str(project), "files": [str(path.relative_to(project)) for path in written]}
        print(json.dumps(result))
        return exitcodes.OK
    print(f"wrote a relay project in {project}:")
    for path in written:
        print(f"  {path.relative_to(project)}")
    command = relay_command()
    print(f"next: cd {project} && {command} rehearse   (or `make rehearse`: offline, on the emulator)")
    print(f"then: {command} next-day   (or `make next-day`; see cron.txt to run it every hour)")
    sys.stdout.flush()
    return exitcodes.OK
