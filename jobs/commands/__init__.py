"""One module per `plana-job` subcommand (upgrade: a package, one command with its phases).

Only jobs.cli imports them, by the strings of its COMMANDS table, and none imports another:
what two commands share lives in jobs.ops, jobs.adapters or jobs.core.
"""
