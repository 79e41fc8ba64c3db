"""``python -m fastdl``: what fastdl gives on this machine.

  python -m fastdl                 build info, then parity and speed of each op's default case
  python -m fastdl bench [--all] [--device cpu|cuda] [--op NAME] [--json out.json]
  python -m fastdl info            build info only

Speedup = reference time / fastdl time, medians of interleaved runs, same threads.
Exits non-zero if any op disagrees with its reference.
"""

import argparse
import json
import sys

import torch

from .bench.cases import CASES, ReferenceUnavailable
from .bench.report import Row, format_info, format_table, machine_info
from .bench.timing import time_pair


def run_case(case, device: torch.device, *, repeats: int) -> Row:
    row = Row(case.op, case.name, str(device), case.reference_name, "ok", None, None, case.flops)
    try:
        inputs = case.make_inputs(device)
        if not case.same(case.run(*inputs), case.run_reference(*inputs)):
            row.parity = "MISMATCH"
            return row
        fastdl_s, reference_s = time_pair(case.run, case.run_reference, inputs, device,
                                          repeats=repeats)
    except ReferenceUnavailable as e:
        row.parity = f"skipped: {e}"
        return row
    except Exception as e:  # reported in the table; the exit code says it failed
        row.parity = f"error: {type(e).__name__}: {e}"
        return row
    row.fastdl_ms, row.reference_ms = fastdl_s * 1e3, reference_s * 1e3
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastdl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", nargs="?", default="check", choices=["check", "bench", "info"])
    parser.add_argument("--all", action="store_true", help="every case, not just the defaults "
                        "(the default for `bench`)")
    parser.add_argument("--device", choices=["cpu", "cuda"], action="append",
                        help="device(s) to run on; default: cpu, and cuda when available")
    parser.add_argument("--op", action="append", help="only these ops (repeatable)")
    parser.add_argument("--repeats", type=int, default=11, help="timed runs per side")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    info = machine_info()
    print(format_info(info), flush=True)
    if args.command == "info":
        return 0

    devices = args.device or ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    everything = args.all or args.command == "bench"
    selected = [
        (case, torch.device(d))
        for case in CASES
        if (everything or case.default) and (not args.op or case.op in args.op)
        for d in devices
        if d in case.devices
    ]
    rows = []
    print()
    for i, (case, device) in enumerate(selected, 1):
        print(f"[{i}/{len(selected)}] {case.title} on {device} ...", end=" ", flush=True)
        row = run_case(case, device, repeats=args.repeats)
        speedup = "" if row.speedup is None else f", {row.speedup:.2f}x"
        print(f"{row.parity}{speedup}", flush=True)
        rows.append(row)
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": [r.as_dict() for r in rows]}, f, indent=2)
    failed = [r for r in rows if r.parity != "ok" and not r.parity.startswith("skipped")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
