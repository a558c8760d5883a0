"""Count the files a pipeline command writes outside its run folder, from the system calls it makes.

Runs the command under ``strace -f`` (every process and thread) and lists each path opened for
writing (``O_WRONLY``/``O_RDWR``/``O_CREAT``), created (``mkdir``, ``rename`` targets, links) or
removed, grouped as: inside the run folder; inside the system temporary folder (the NIfTI writer's
uncompressed temporary and the probe of Python's ``tempfile``, random names, removed); the user's caches (matplotlib, torch) and ``/dev``; and
anything else, which must be empty. Used for docs/RELIABILITY.md:

    python benchmarks/outside_writes.py --run-dir /tmp/o/run -- pipeline run configs/ct_nodules.yaml --out /tmp/o/run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

WRITE_CALL = re.compile(r'(openat|open|creat)\((?:AT_FDCWD|\d+), "([^"]+)", ([A-Z_|]+)')
PATH_CALL = re.compile(r'\b(mkdir|mkdirat|rename|renameat2?|link|linkat|symlink|unlink|unlinkat)\((?:AT_FDCWD, |\d+, )?"([^"]+)"'
                       r'(?:, (?:AT_FDCWD, |\d+, )?"([^"]+)")?')


def written_paths(log: Path) -> list[tuple[str, str]]:
    """``(call, absolute path)`` of every write-like call in an strace log (the last path of a rename or link)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        m = WRITE_CALL.search(line)
        if m and any(f in m.group(3) for f in ("O_WRONLY", "O_RDWR", "O_CREAT")) and "= -1" not in line:
            out.append((m.group(1), m.group(2)))
            continue
        m = PATH_CALL.search(line)
        if m and "= -1" not in line:
            out.append((m.group(1), m.group(3) or m.group(2)))
    return out


def classify(path: str, run_dir: Path, cwd: Path) -> str:
    p = Path(os.path.normpath(cwd / path))
    tmp = Path(tempfile.gettempdir()).resolve()
    if p == run_dir or run_dir in p.parents:
        return "run folder"
    if str(p).startswith(("/dev/", "/proc/", "/sys/")):
        return "/dev, /proc"
    if p.parent == tmp and (re.fullmatch(r"tmp[a-z0-9_]{8}\.nii", p.name) or re.fullmatch(r"[a-z0-9_]{8}", p.name)):
        return "system temp folder: random-named temporaries (NIfTI writer, Python's tempfile probe), removed"
    if any(part in str(p) for part in ("/.cache/", "/.config/matplotlib", "__pycache__", "/.triton", "/ray/session")):
        return "library caches"
    return "elsewhere"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run-dir", type=Path, required=True)
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = [c for c in args.command if c != "--"]
    if cmd and cmd[0] == "pipeline":
        cmd = [sys.executable, "-m", "pipeline.cli", *cmd[1:]]
    with tempfile.TemporaryDirectory() as td:
        log = Path(td) / "strace.log"
        proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=%file", "-o", str(log), *cmd], capture_output=True, text=True)
        paths = written_paths(log)
    run_dir = args.run_dir.resolve()
    groups: dict[str, Counter] = {}
    calls: dict[str, set] = {}
    for call, path in paths:
        if path.startswith(str(log.parent)):
            continue
        groups.setdefault(classify(path, run_dir, Path.cwd()), Counter())[path] += 1
        calls.setdefault(path, set()).add(call)
    print(f"command exit code {proc.returncode}; {len(paths)} write-like calls")
    for group in ("run folder", "system temp folder: random-named temporaries (NIfTI writer, Python's tempfile probe), removed", "/dev, /proc",
                  "library caches", "elsewhere"):
        files = groups.get(group, Counter())
        print(f"{group}: {len(files)} distinct paths")
        if group in ("elsewhere", "library caches"):
            for f in sorted(files)[:20]:
                print(f"    {f} ({', '.join(sorted(calls[f]))})")
    return 0 if not groups.get("elsewhere") else 1


if __name__ == "__main__":
    sys.exit(main())
