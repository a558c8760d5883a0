"""The kernel under the stages: config schema and loading, errors, atomic I/O, the run-directory
contract (artifacts), manifest, results and the item engines. It imports nothing of ours above it."""
