"""The ``hf-egt`` command line: the entry point and the dispatch to one module per command.

    hf-egt train            fine-tune a causal LM with LoRA and a group objective (EGTTrainer), report, card, push
                            (hf_egt.apps.train)
    hf-egt train-diffusion  LoRA-fine-tune a diffusers model with a group objective (hf_egt.apps.train_diffusion)
    hf-egt evaluate         per-group perplexity and EGT divergence of a model (+ adapter) on a dataset
                            (hf_egt.apps.evaluate)
    hf-egt demo             the offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max (hf_egt.apps.demo)

The checks the commands share (model, adapter, output folder, resume) are ``hf_egt.apps.checks``, their argparse
helpers ``hf_egt.apps.arguments``. ``train`` parses every ``transformers.TrainingArguments`` option (through
``EGTConfig``), and runs unchanged under ``accelerate launch -m hf_egt.apps.cli train ...``. Bad input (unknown dataset,
column or group, a model without a causal-LM head, a push without a token or to an unreachable Hub, an optimizer,
schedule or ``--report_to`` integration Trainer would reject, a missing, truncated or foreign checkpoint, one whose
compatibility record differs from the run's, an output folder holding another run) fails before any model is loaded or
trained, and before ``--overwrite_output_dir`` removes anything. From the ``hf-egt`` console script (or
``python -m hf_egt``) such an error prints one ``error: ...`` line and exits with status 2; ``hf-egt --debug ...`` (or
``HF_EGT_DEBUG=1``) shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from hf_egt import __version__
from hf_egt.apps.arguments import TRUE_STRINGS

logger = logging.getLogger("hf_egt.apps.cli")

COMMANDS = {
    "train": "fine-tune a causal LM with LoRA and a group objective (all TrainingArguments options apply)",
    "train-diffusion": "train a diffusion model with a group objective (LoRA or HyperLoRA on a diffusers UNet)",
    "evaluate": "per-group perplexity and EGT divergence of a model (and adapter) on a dataset",
    "demo": "offline demo: SmolLM2-135M on BOLD race, base vs ERM vs min-max, with report and plot",
}
FORWARDED = ("train", "train-diffusion")
DEBUG_ENV = "HF_EGT_DEBUG"


def _write(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


def build_parser(commands_with_options: Sequence[str] = tuple(COMMANDS)) -> argparse.ArgumentParser:
    """The ``hf-egt`` parser; only the sub-commands in ``commands_with_options`` get their options (their ``choices``
    come from the registries, which import torch: ``hf-egt --help`` stays instant)."""
    parser = argparse.ArgumentParser(
        prog="hf-egt",
        description="Equalized Generative Treatment for Hugging Face models: measure per-group generation quality "
        "and fix it with min-max LoRA fine-tuning.",
        epilog="Run `hf-egt COMMAND --help` for the options of a command.",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"hf-egt {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help=f"Show the traceback of an error (also: environment {DEBUG_ENV}=1)."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        # train / train-diffusion have their own parsers; their arguments (and --help) are forwarded.
        sub = commands.add_parser(
            name, help=help_text, description=help_text, add_help=name not in FORWARDED, allow_abbrev=False
        )
        if name == "evaluate" and name in commands_with_options:
            from hf_egt.apps.evaluate import add_evaluate_arguments

            add_evaluate_arguments(sub)
        elif name == "demo" and name in commands_with_options:
            from hf_egt.apps.demo import add_demo_arguments

            add_demo_arguments(sub)
    return parser


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of every command (``train``'s and ``train-diffusion``'s are their own, the others sub-parsers), for
    ``--help`` and for the test that each shared concept has one name and one default across them."""
    from hf_egt.apps.train import train_parser
    from hf_egt.apps.train_diffusion import build_parser as diffusion_parser

    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    return {
        "train": train_parser(),
        "train-diffusion": diffusion_parser(),
        "evaluate": commands.choices["evaluate"],
        "demo": commands.choices["demo"],
    }


def _without_global_options(argv: list[str]) -> list[str]:
    """``argv`` without the leading ``--debug`` (a global option; ``hf-egt train --debug`` is Trainer's own)."""
    while argv and argv[0] == "--debug":
        argv = argv[1:]
    return argv


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Entry point of the ``hf-egt`` commands; returns the command's result (for tests and scripts) and raises on
    bad input (``console_main`` turns that into one ``error:`` line and exit status 2)."""
    argv = _without_global_options(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = build_parser(argv[:1])
    args, rest = parser.parse_known_args(argv[:1] if argv and argv[0] in FORWARDED else argv)
    if args.command not in FORWARDED and rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "train":
        from hf_egt.apps.train import run_train

        result = run_train(argv[1:])
    elif args.command == "train-diffusion":
        from hf_egt.apps.train_diffusion import main as diffusion_main
        from hf_egt.apps.train_diffusion import parse_args as diffusion_parse_args

        return diffusion_main(diffusion_parse_args(argv[1:]))
    elif args.command == "evaluate":
        from hf_egt.apps.evaluate import run_evaluate

        result = run_evaluate(args, argv[1:])
    else:
        from hf_egt.apps.demo import run_demo_command

        result = run_demo_command(args)
    if result and "runs" in result:
        from hf_egt.apps.reporting import summary

        _write(summary(result))
    return result


def console_main(argv: Sequence[str] | None = None) -> None:
    """The ``hf-egt`` console script (and ``python -m hf_egt``): runs ``main`` and exits 0 on success (``main``'s
    result is for Python callers; returned to ``sys.exit`` it would be printed and turned into exit status 1).

    Bad input (a ``ValueError`` or ``OSError`` such as ``FileNotFoundError``) prints ``error: <message>`` on one line
    and exits with status 2, as argparse does; ``--debug`` first or ``HF_EGT_DEBUG=1`` re-raises it instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = argv[:1] == ["--debug"] or os.environ.get(DEBUG_ENV, "").lower() in TRUE_STRINGS
    try:
        main(argv)
    except (ValueError, OSError) as error:
        if debug:
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"hf-egt: error: {message}\n")
        sys.exit(2)


if __name__ == "__main__":
    console_main()
