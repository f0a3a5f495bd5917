"""
common.py: the plumbing every script shares. It imports no other module of this project, so any
of them can use it without an import circle.

  files      replace_atomically / write_atomically: a file is either the old one or the whole new
             one, never half of one (what makes every long job resumable after a kill);
             check_output: fail before hours of work if the output cannot be written.
  CLIs       run_cli: bad input becomes one line `error: ...` and exit code 2, never a traceback;
             parse_list, parse_named_paths, differences.
  runs       rank_and_world (torchrun's environment), mix_seed, format_seconds.
  GGUF       open_gguf / gguf_value: a GGUF file's header with clear errors, for the model
             (checkpoints.py) and the tokenizer (tokenizer.py) that the same file carries.
"""

import os
import sys


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

def replace_atomically(path: str, write) -> None:
    """Create `path` through `write(temp_path)`, then fsync the temp file and rename it over
    `path`: a reader (or a run resumed after a crash) sees the old file or the whole new one,
    never half of one. Every file this project writes for keeps goes through here."""
    tmp = f"{path}.{os.getpid()}.tmp"      # per process: several ranks may write at once
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):             # the write failed (e.g. a full disk): drop the partial file
            os.remove(tmp)


def write_atomically(path: str, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    replace_atomically(path, write)


def check_output(out: str) -> None:
    """Fail before loading a large model if the output file `out` cannot be written."""
    if os.path.isdir(out):
        raise ValueError(f"--out {out} is a directory; give a file name inside it, such as {out}/out.jsonl")
    out_dir = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create the output directory {out_dir} ({e.strerror}); choose another --out") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ValueError(f"the output directory {out_dir} is not writable; choose another --out")


# ----------------------------------------------------------------------------------------------
# Command lines
# ----------------------------------------------------------------------------------------------

def run_cli(main_fn, argv: list[str] | None = None) -> None:
    """Run a CLI entry point; bad input becomes one line on stderr and exit code 2, no traceback."""
    try:
        main_fn(argv)
    except (ValueError, OSError) as error:   # OSError: our FileNotFoundErrors, and the system's (a full disk, ...)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_list(text: str, kind) -> list:
    """"1,2,4" -> [1, 2, 4] (kind=int)."""
    try:
        return [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"could not read {text!r} as a comma-separated list of {kind.__name__}") from None


def parse_named_paths(text: str, flag: str) -> dict[str, str]:
    """"a=path1,b=path2" -> {"a": "path1", "b": "path2"}."""
    named = {}
    for item in text.split(","):
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{flag} expects name=path[,name=path...], got {item!r}")
        named[name] = path
    return named


def differences(before: dict, now: dict, then: str = "in the checkpoint") -> str:
    """'key: A in the checkpoint, B now; ...' for every key whose value differs (only those: a
    whole config in an error message hides the one field that matters)."""
    return "; ".join(f"{key}: {before.get(key)!r} {then}, {now.get(key)!r} now"
                     for key in sorted(before.keys() | now.keys()) if before.get(key) != now.get(key))


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------

def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, as torchrun sets them (0, 1 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def mix_seed(seed: int, index: int) -> int:
    """One seed per (run seed, index) pair, e.g. per training step or per generation batch, so
    that what happens at `index` does not depend on what ran before it (resume, sharding)."""
    return seed * 1_000_003 + index


def format_seconds(seconds: float) -> str:
    """3725 -> '1h02m05s'; 65 -> '1m05s'."""
    seconds = int(round(seconds))
    hours, minutes = seconds // 3600, seconds // 60 % 60
    return f"{hours}h{minutes:02d}m{seconds % 60:02d}s" if hours else f"{minutes}m{seconds % 60:02d}s"


# ----------------------------------------------------------------------------------------------
# GGUF files (llama.cpp's format: one file holds the weights, the config and the tokenizer)
# ----------------------------------------------------------------------------------------------

def open_gguf(path: str):
    """A gguf.GGUFReader over `path` (memory-mapped: tensors are read when used)."""
    try:
        import gguf
    except ImportError:
        raise ValueError("reading a .gguf file needs the `gguf` package (llama.cpp's own reader): "
                         "pip install -r requirements.txt") from None
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ValueError(f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF'): pass a .gguf "
                         "that llama.cpp's tools wrote, or download it again")
    try:
        return gguf.GGUFReader(path)
    except Exception as error:      # a truncated or damaged file raises many types (ValueError, IndexError, ...)
        raise ValueError(f"{path}: cannot read the GGUF file ({type(error).__name__}: {error}); it is "
                         "truncated or damaged: download it again") from None


def gguf_value(reader, key: str, default=None):
    """The value of one metadata key (a number, string, or list), or `default` if absent."""
    field = reader.fields.get(key)
    return default if field is None else field.contents()
