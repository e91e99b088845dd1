"""One module per `shimstats` subcommand: each has add_parser(subparsers) and run(args) -> exit code."""
