"""The ``driftswitch`` command line."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="driftswitch")
def main() -> None:
    """driftswitch: drift-triggered kill switches and rollouts for ML models behind flags."""
