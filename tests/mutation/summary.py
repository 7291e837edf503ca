"""The summary `make mutation` prints after `mutmut run`: mutants per module and per group.

mutmut 3 keeps one result per mutant in ``mutants/<module path>.meta`` (JSON: the exit code of
the tests run against it). This reads those files (run it from the project root) and prints, per
module and per group (``gradbook/``; ``service/app/inputs.py`` + ``service/gateway/errors.py``),
how many
mutants there were and how many the fast tests killed, with mutmut's score: killed or timed out
over all. The rest survived: a test is missing, or the mutant behaves as the original does (an
*equivalent* mutant: docs/tests.md, "Mutation testing", lists those judged so).

    python tests/mutation/summary.py [--survivors]

``--survivors`` also lists the mutants that were not killed, by name (``mutmut show NAME``
shows one's diff). Exits 1 when there is no result to read, 2 when ``gradbook/`` is below its
target.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

MUTANTS = Path("mutants")
GROUPS = {  # name: the prefix of its modules' paths
    "gradbook/": "gradbook/",
    "service/app/inputs.py + service/gateway/errors.py": "service/",
}
TARGET = {"gradbook/": 90.0}  # percent killed; the issue sets none for the service's modules

# mutmut's exit codes (mutmut/stats.py) by what the fast tests did against the mutant
STATUS = {1: "killed", 3: "killed",  # a test failed, or pytest itself: caught
          0: "survived",
          5: "no tests", 33: "no tests",  # no fast test calls the mutated function
          24: "timeout", -24: "timeout", 36: "timeout", 152: "timeout", 255: "timeout",
          34: "skipped", None: "not run"}
SHOWN = ("survived", "no tests", "timeout", "other", "not run")


def read_results() -> dict[str, dict[str, str]]:
    """``{module path: {mutant name: status}}`` from every ``.meta`` file under mutants/."""
    results = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        module = meta.relative_to(MUTANTS).as_posix().removesuffix(".meta")
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        if codes:
            results[module] = {name: STATUS.get(code, "other") for name, code in codes.items()}
    return results


def score(counts: Counter[str]) -> float:
    """mutmut's mutation score, in percent: killed or timed out, over all but skipped."""
    tested = sum(counts.values()) - counts["skipped"]
    return 100.0 * (counts["killed"] + counts["timeout"]) / tested if tested else 0.0


def line(label: str, counts: Counter[str]) -> str:
    total = sum(counts.values()) - counts["skipped"]
    caught = counts["killed"] + counts["timeout"]
    rest = [f"{counts[key]} {key}" for key in SHOWN if counts[key] or key == "survived"]
    return (f"{label}: {caught} of {total} mutants killed ({score(counts):.1f} %); "
            + ", ".join(rest))


def main(argv: list[str]) -> int:
    results = read_results()
    if not results:
        print("no mutmut results under mutants/: run `make mutation` first")
        return 1
    print("\nMutation testing: mutmut over the fast tests")
    below = []
    for group, prefix in GROUPS.items():
        total: Counter[str] = Counter()
        modules = [(m, Counter(r.values())) for m, r in results.items() if m.startswith(prefix)]
        for _, counts in modules:
            total += counts
        print()
        print(line(group, total))
        for module, counts in modules:
            print("    " + line(module, counts))
        if group in TARGET:
            met = score(total) >= TARGET[group]
            print(f"    target {TARGET[group]:.0f} %: {'met' if met else 'NOT MET'}")
            if not met:
                below.append(group)
    if "--survivors" in argv:
        print("\nNot killed (`.venv/bin/mutmut show NAME` shows the change):")
        for mutants in results.values():
            for name, status in mutants.items():
                if status not in ("killed", "timeout", "skipped"):
                    print(f"    {status:8}  {name}")
    else:
        print("\nThe survivors: .venv/bin/python tests/mutation/summary.py --survivors")
    return 2 if below else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
