"""The CLI's error policy, in one place: a user error is one line on stderr naming the file or
argument and the reason, exit 2; anything else is a bug and keeps its traceback.

Readers turn what they cannot parse into a ValueError naming the file (damaged JSON:
`config.read_json`; safetensors, zip and pickle: `interop`), so the list of user-error types
stays short. `musicssl.cli.main` applies it; argument types here refuse bad values at parse time.
"""

from __future__ import annotations

import argparse

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError)
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def one_line(error: BaseException) -> str:
    """The message on one line: OS errors name their file; newlines and runs of spaces collapse."""
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in str(error):
        text = f"{error.filename}: {error.strerror or error}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


class OneLineParser(argparse.ArgumentParser):
    """argparse's errors as one line (`musicssl extract: error: argument --device: ...`), no
    usage block: the policy's line, and the same exit 2. --help still prints the usage."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def device_argument(text: str) -> str:
    """cpu, cuda, cuda:N or mps, checked at parse time: an unknown name or a CUDA device this
    torch cannot use would otherwise fail deep inside the run with a traceback. torch is imported
    only for an accelerator, so parsing a cpu command stays fast."""
    name = text.strip().lower()
    if name == "cpu":
        return name
    kind, _, index = name.partition(":")
    if kind not in ("cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    import torch

    if kind == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: MPS is not available on this machine")
    if kind == "cuda" and not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        raise argparse.ArgumentTypeError(f"{text!r}: CUDA is not available (torch {torch.__version__} is {build}"
                                         f"{', but no GPU is visible' if torch.version.cuda else ''})")
    if index and int(index) >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return name
