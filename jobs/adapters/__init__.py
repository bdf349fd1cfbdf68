"""One module (or package) per outside system a job talks to: PostgreSQL and its tools, Odoo,
the local and the remote filestore, HTTP peers, Redis, Matrix.

Each owns the client and what that system's failures mean for the exit code. Adapters import
the core only, not one another (Odoo runs on the PostgreSQL conninfo: the one exception).
"""
