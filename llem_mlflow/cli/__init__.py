"""The command line (typer): one module per command group; it alone maps errors to exit codes."""
