"""Command-line entry points (`attnseg COMMAND ...`)."""
