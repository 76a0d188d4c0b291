"""Caption tokenisation as COCO's caption evaluation does it, and a Java-free stand-in.

`ptb_tokenize` runs what pycocoevalcap's `PTBTokenizer` runs (Stanford CoreNLP 3.4.1's
PTBTokenizer, `-preserveLines -lowerCase`, the jar pycocoevalcap ships) and drops the same
punctuation tokens, in one Java call for any number of captions. It writes its temporary
file in a temporary folder, not beside the jar as pycocoevalcap does (a read-only
site-packages would refuse that).

`simple_tokenize` is the fallback where Java is absent: lowercase, clitics split as PTB
splits them (`dog's` -> `dog 's`, `isn't` -> `is n't`, `cannot` -> `can not`), punctuation
split off words and the same list removed, brackets kept as PTB's `-lrb-` ... tokens (a
quirk of COCO's: its list names them upper case, after lowercasing). It equals PTB on plain
captions (tests/evaluation/test_captions.py checks a set against Java); PTB's rarer rules
(unicode quotes and dashes, abbreviations beyond `x.y.`, `gonna`) it does not copy.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from pycocoevalcap.tokenizer import ptbtokenizer

# the list COCOEvalCap removes after tokenising, taken from pycocoevalcap itself
PUNCTUATIONS = frozenset(ptbtokenizer.PUNCTUATIONS)
JAR = Path(ptbtokenizer.__file__).parent / ptbtokenizer.STANFORD_CORENLP_3_4_1_JAR


def java() -> str | None:
    """The `java` on PATH, if any."""
    return shutil.which("java")


def ptb_tokenize(captions: Sequence[str]) -> list[str]:
    """Each caption as COCOEvalCap tokenises it: one Java process for all of them.
    Raises RuntimeError (with Java's message) where Java cannot run."""
    exe = java()
    if exe is None:
        raise RuntimeError("no java on PATH")
    # one caption a line, as pycocoevalcap writes them; a line break inside one is a space
    # (pycocoevalcap replaces only \n: PTB also breaks at \r, \v, \f, U+2028/9, which
    # would shift every later caption onto another's references)
    text = "\n".join(c.translate(_BREAKS) for c in captions)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "captions.txt"
        path.write_bytes(text.encode())
        cmd = [exe, "-cp", str(JAR), "edu.stanford.nlp.process.PTBTokenizer"]
        done = subprocess.run(
            [*cmd, "-preserveLines", "-lowerCase", str(path)], capture_output=True, check=False
        )
    lines = done.stdout.decode().split("\n")
    if done.returncode or len(lines) != len(captions):
        err = done.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"java PTBTokenizer exited {done.returncode} with {len(lines)} lines for "
            f"{len(captions)} captions: {err[-1] if err else 'no message'}"
        )
    return [_drop_punctuation(line.rstrip().split(" ")) for line in lines]


_BREAKS = str.maketrans(dict.fromkeys("\n\r\v\f\u2028\u2029", " "))


def _drop_punctuation(tokens: Sequence[str]) -> str:
    return " ".join(t for t in tokens if t not in PUNCTUATIONS)


# PTB's contractions: the clitic is its own token
_CLITICS = re.compile(r"(?<=\w)(n't|'s|'re|'ve|'d|'ll|'m)\b")
_CLITIC_START = re.compile(r"(n't|'s|'re|'ve|'d|'ll|'m)(?!\w)")
# PTB's names for brackets and double quotes (the quotes are on COCO's list, the brackets not)
_PTB = {
    "(": "-lrb-",
    ")": "-rrb-",
    "[": "-lsb-",
    "]": "-rsb-",
    "{": "-lcb-",
    "}": "-rcb-",
    '"': "''",
}
_LEADING = "\"'`([{$#"
_TRAILING = "\"'`)]},;:?!%"
# words whose final period PTB keeps: u.s., e.g. and the common titles
_ABBREVIATION = re.compile(r"^(?:(?:[a-z]\.){2,}|(?:mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|ltd)\.)$")


def simple_tokenize(caption: str) -> str:
    """One caption tokenised without Java, as PTB + COCO's punctuation list would on plain
    English captions (the module's docstring says what it leaves out)."""
    text = "".join(map(_unseen, caption.lower())).replace("cannot", "can not")
    text = _CLITICS.sub(r" \1", text)
    tokens: list[str] = []
    for chunk in text.split():
        tokens += _split(chunk)
    return _drop_punctuation([_PTB.get(t, t) for t in tokens])


def _unseen(char: str) -> str:
    """PTB reads control, format and unassigned characters as spaces (a soft hyphen: as
    nothing), as it does the tiny models' stray bytes."""
    if char == "\xad":
        return ""
    return " " if unicodedata.category(char)[0] == "C" else char


def _split(chunk: str) -> list[str]:
    """A whitespace-separated chunk -> its leading punctuation, its word, its trailing."""
    head: list[str] = []
    tail: list[str] = []
    while chunk and chunk[0] in _LEADING and not _CLITIC_START.match(chunk):
        head.append(chunk[0])
        chunk = chunk[1:]
    while len(chunk) > 1:
        if chunk.endswith("...") and len(chunk) > 3:
            tail.insert(0, "...")
            chunk = chunk[:-3]
        elif chunk[-1] in _TRAILING or (chunk[-1] == "." and not _ABBREVIATION.match(chunk)):
            tail.insert(0, chunk[-1])
            chunk = chunk[:-1]
        else:
            break
    return [*head, *([chunk] if chunk else []), *tail]
