"""Speech for the evaluator tests, made here with the flite binary (a setup requirement, like
espeak-ng: launch/setup.sh installs the Debian package). flite's voices are ones pocketsphinx
recognises; espeak-ng's formant voices are not."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Harvard sentences (IEEE 1969), list 1 (the first, "The birch canoe ...", defeats pocketsphinx)
SENTENCES = (
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
)


def flite(text: str, voice: str, path: Path) -> Path:
    """`text` spoken by a flite voice (kal16, slt, awb, rms: 16 kHz; kal: 8 kHz) into `path`."""
    if shutil.which("flite") is None:
        pytest.fail("flite is not installed: run launch/setup.sh (apt-get install flite)")
    subprocess.run(["flite", "-voice", voice, "-t", text, "-o", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> dict[tuple[str, int], Path]:
    """(voice, sentence index) -> a wav file, for the voices slt, kal16 and awb."""
    root = tmp_path_factory.mktemp("flite")
    return {
        (voice, i): flite(text, voice, root / f"{voice}_{i}.wav")
        for voice in ("slt", "kal16", "awb")
        for i, text in enumerate(SENTENCES[:3])
    }
