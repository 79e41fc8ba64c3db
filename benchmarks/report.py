"""Turn pytest-benchmark JSON into the ratio table (reference median / fastdl median).

    python benchmarks/report.py results.json [--markdown out.md]
"""

import argparse
import json
import sys

from fastdl.bench.report import Row, format_info, format_table, machine_info


def rows_from_pytest_benchmark(data: dict) -> list[Row]:
    pairs: dict[tuple, dict] = {}
    for bench in data["benchmarks"]:
        info = bench["extra_info"]
        key = (info["op"], info["case"], info["device"], info["reference"], info.get("flops", 0.0))
        pairs.setdefault(key, {})[info["impl"]] = bench["stats"]["median"] * 1e3
    rows = []
    for (op, case, device, reference, flops), times in pairs.items():
        rows.append(Row(op, case, device, reference, "ok", times.get("fastdl"), times.get("reference"),
                        flops))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json_file")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table here")
    args = parser.parse_args(argv)
    with open(args.json_file) as f:
        rows = rows_from_pytest_benchmark(json.load(f))
    text = format_info(machine_info()) + "\n\n" + format_table(rows)
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
