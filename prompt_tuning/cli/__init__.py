"""Command-line entry points; each subcommand is a thin main over the library."""
