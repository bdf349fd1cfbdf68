"""The frame and the rules every job shares, whatever it touches: the runner, its result and
exit codes, the log and its redaction, retries, child processes, options and naming.

It imports nothing from the rest of the package.
"""
