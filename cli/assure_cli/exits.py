"""The command's exit codes (docs/ci.md), one meaning each, so a CI job can tell them apart."""

PASSED = 0
FAILED = 1  # a path failed or was inconclusive in every repeat, or was flaky under --fail-on-flaky
BAD_INPUT = 2  # unknown scenario or id, bad flags, input the server refused, missing URL or token
TIMEOUT = 3  # runs still going when --timeout ran out (or, without --wait, not finished yet)
PLATFORM = 4  # nothing judged failed, but the platform could not test some runs (or was unreachable),
#              or the command itself failed unexpectedly (a bug, a server reply of an unknown shape)
