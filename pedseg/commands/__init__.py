"""The `pedseg` subcommands, one module each; every module has `register(subparsers)`, which adds its parser
with `func` set to the function that runs it. `pedseg/cli.py` registers them."""
