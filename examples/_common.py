"""What the example scripts share: the options every one of them takes,
pyrnn's thread count for the run, and the figure's matplotlib handling.

The scripts import it from their own folder (`python examples/x.py` puts that
folder first on sys.path).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import pyrnn


def _number(kind, test, what):
    """An argparse type: ``kind`` (int or float) that passes ``test``, else a usage error saying ``what``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = what  # (argparse names the type in its messages)
    return parse


positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0 and v != float("inf"), "a positive number")
nonnegative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number >= 0")
probability = _number(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")
unit_rate = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def existing_file(text: str) -> Path:
    """An argparse type: a path to a file that exists."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def writable_path(text: str) -> Path:
    """An argparse type: a file path whose folder exists (checked before a long run, not at its end)."""
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder of {text} does not exist")
    return path


def parser(doc: str, fast_help: str) -> argparse.ArgumentParser:
    """The script's parser: its docstring's first paragraph as description, and --fast."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fast", action="store_true", help=fast_help)
    return p


def add_run_options(p: argparse.ArgumentParser, script: str,
                    threads_help: str = "pyrnn threads (default: pyrnn's default)") -> None:
    """--seed, --threads, --plot (default: the committed figure next to the script) and --no-plot."""
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--threads", type=positive_int, help=threads_help)
    p.add_argument("--plot", type=writable_path, default=Path(script).with_suffix(".png"), help="figure path")
    p.add_argument("--no-plot", action="store_true", help="do not draw the figure")


@contextlib.contextmanager
def pyrnn_threads(n):
    """Runs the block with n pyrnn threads (None or 0: unchanged), then restores the setting."""
    before = pyrnn.thread_setting()
    if n:
        pyrnn.set_num_threads(n)
    try:
        yield
    finally:
        pyrnn.set_num_threads(before)


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (with a message) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib, or pyrnn[plot])")
        return None
    return plt


def save_figure(plt, fig, path):
    """Lays out, writes and closes the figure; prints and returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"figure: {path}")
    return path
