"""CLI subcommands, one module per area; see neko/cli.py."""
