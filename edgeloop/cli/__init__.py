"""The ``edgeloop`` command line: the ``main`` group; the commands live in the modules beside it.

Heavy libraries (Prefect, MLflow, GX, DVC, scikit-learn) are imported inside the commands that
need them, never at the top of a module: ``edgeloop --help`` must stay instant.
"""

from __future__ import annotations

import click

from edgeloop.cli import batch, data, models, stack


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeloop")
def main() -> None:
    """edgeloop: validate batches, surface edge cases, retrain, shadow, promote, monitor.

    Start with `edgeloop demo` (the whole loop on embedded defaults), or
    `edgeloop init --data YOUR.csv --target LABEL` for your own data.
    """


for _module in (data, models, batch, stack):
    for _command in _module.COMMANDS:
        main.add_command(_command)
