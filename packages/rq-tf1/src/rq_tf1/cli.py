"""rq-tf1: vai_q_tensorflow's command line, so existing scripts change only the program name.

    rq-tf1 quantize --input_frozen_graph F.pb --input_nodes a,b --input_shapes ?,224,224,3:? \\
        --output_nodes y --input_fn pkg.mod.fn --calib_iter 100 --output_dir DIR [--preset npu_cnn] [--method 0|1] [--ignore_nodes n1,n2] [--allow_violations]
    rq-tf1 inspect --input_frozen_graph F.pb [--input_nodes a] [--output_nodes y] [--preset npu_cnn]

Errors print one line naming the problem and the fix, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys

from rq_common.errors import run_command
from rq_tf1.api import inspect_frozen_graph, quantize_frozen_graph
from rq_tf1.errors import GraphError


def _names(text: str | None, flag: str) -> list[str] | None:
    """A comma-separated list of node names; a flag given with no names is refused (an empty list
    would reach the graph checks and be reported as some other problem)."""
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise GraphError(f"{flag} '{text}' names no node; give comma-separated node names")
    return names


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as rq's are (the usage is in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="rq-tf1", description="Quantize TF1 frozen graphs to rq's int8 ONNX format")
    commands = parser.add_subparsers(dest="command", required=True)
    quantize = commands.add_parser("quantize", help="calibrate and write quantize_eval_model.pb and quantized.onnx")
    quantize.add_argument("--input_frozen_graph", required=True)
    quantize.add_argument("--input_nodes", required=True, help="comma-separated input node names")
    quantize.add_argument("--output_nodes", required=True, help="comma-separated output node names")
    quantize.add_argument("--input_shapes", default=None, help="e.g. ?,224,224,3 ; shapes of several inputs separated by ':'")
    quantize.add_argument("--input_fn", required=True, help="module.function(iteration) -> {input node name: array}")
    quantize.add_argument("--calib_iter", type=int, default=100)
    quantize.add_argument("--output_dir", default="./quantize_results")
    quantize.add_argument("--preset", default="npu_cnn")
    quantize.add_argument(
        "--method", type=int, choices=(0, 1), default=None, help="0: power-of-two NonOverflow, 1: power-of-two MinMSE"
    )
    quantize.add_argument("--ignore_nodes", default=None, help="comma-separated node names to keep in float")
    quantize.add_argument("--quiet", action="store_true", help="no progress bar")
    quantize.add_argument(
        "--equalize",
        choices=("auto", "on", "off"),
        default="auto",
        help="cross-layer equalization (auto, the default: on where the preset's weights are per tensor)",
    )
    quantize.add_argument(
        "--allow_violations", action="store_true", help="write the ONNX model even if it breaks a rule of the preset's format"
    )
    inspect = commands.add_parser("inspect", help="list the nodes and what rq-tf1 does with each")
    inspect.add_argument("--input_frozen_graph", required=True)
    inspect.add_argument("--input_nodes", default=None)
    inspect.add_argument("--output_nodes", default=None)
    inspect.add_argument("--preset", default="npu_cnn")
    args = parser.parse_args(argv)
    return run_command("rq-tf1", lambda: _run(args))


def _run(args) -> int:
    if args.command == "inspect":
        rows = inspect_frozen_graph(
            args.input_frozen_graph,
            _names(args.input_nodes, "--input_nodes"),
            _names(args.output_nodes, "--output_nodes"),
            args.preset,
        )
        width = max(len(name) for name, _, _ in rows)
        for name, op, what in rows:
            print(f"{name:<{width}}  {op:<22}  {what}")
        return 0
    result = quantize_frozen_graph(
        args.input_frozen_graph,
        _names(args.input_nodes, "--input_nodes"),
        _names(args.output_nodes, "--output_nodes"),
        args.input_fn,
        max_calibration_batches=args.calib_iter,
        output_dir=args.output_dir,
        input_shapes=args.input_shapes,
        preset=args.preset,
        method=args.method,
        exclude_nodes=_names(args.ignore_nodes, "--ignore_nodes") or (),
        quiet=args.quiet,
        allow_violations=args.allow_violations,
        equalization={"auto": None, "on": True, "off": False}[args.equalize],
    )
    print(f"wrote {result.files['eval_model']}")
    print(f"wrote {result.path}")
    for op in result.float_ops:
        print(f"float: {op.node}: {op.reason}")
    for violation in result.violations:
        print(f"violation: {violation}")
    if result.violations:
        print(f"written anyway (--allow_violations): {len(result.violations)} rule(s) of '{result.preset.name}' broken")
    return 0


if __name__ == "__main__":
    sys.exit(main())
