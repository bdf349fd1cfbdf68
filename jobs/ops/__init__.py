"""Tenant operations several commands share, built on the adapters: cloning a database and who
may connect to it, a database's identity, neutralising a copy, backup sets (their manifest, their
archive, retention), the events stream, the publish-by-rename swap, and the markers.
"""
