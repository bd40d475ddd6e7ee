"""Subcommand module (to be filled in): registers its commands on `ragsam.cli.app.app`."""
