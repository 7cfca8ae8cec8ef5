"""Dispatcher: ``python -m benchmarks <benchmark> [options]``.

Why a registry of lazy imports: each benchmark pulls in torch/transformers only when it is run,
and a new benchmark is one more entry here.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence

logger = logging.getLogger(__name__)

# benchmark name -> module exposing ``main(argv) -> int``
BENCHMARKS: dict[str, str] = {
    "scoring": "benchmarks.scoring",
    "dpr_vs_trl": "benchmarks.dpr_vs_trl",
    "dpr_lora_vs_trl": "benchmarks.dpr_lora_vs_trl",
    "sft_overhead": "benchmarks.sft_overhead",
    "flops": "benchmarks.flops",
    "generation": "benchmarks.generation",
    "e2e": "benchmarks.e2e",
    "gpu_check": "benchmarks.gpu_check",
    "sft_lora": "benchmarks.sft_lora",
    "shared_base": "benchmarks.shared_base",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark named by ``argv[0]`` with the remaining arguments; return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(
            "usage: python -m benchmarks {" + ",".join(BENCHMARKS) + "} [options]\n"
            "       python -m benchmarks <benchmark> --help   for its options\n"
        )
        return 0 if args else 2
    name = args[0]
    if name not in BENCHMARKS:
        logging.basicConfig(level=logging.INFO)
        logger.error(
            "unknown benchmark %r; choose one of %s, e.g. `python -m benchmarks scoring`.",
            name,
            sorted(BENCHMARKS),
        )
        return 2
    module = importlib.import_module(BENCHMARKS[name])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    sys.exit(main())
