"""Every code block of the README and docs/ is executed or checked: Python blocks are the worked
examples tests/test_docs.py runs; TOML blocks parse, and suite fragments load in a suite; every
``ddbench`` command line parses with the CLI's own parser, names suites and record folders that
exist, and only registered views and protocols; ``tox -e`` environments exist; benchmark
commands name scripts and options that exist; the suite error shown is the one a run prints;
the layout map names folders that exist and every harness layer; the record-field list names
the schema's fields; the engine's signature is the function's. The README stays a front door:
at most 250 lines, the two commands CI relies on, a row for every registered method, a link to
every page of docs/; every relative link resolves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from conftest import dump_toml, tiny_suite
from test_docs import EXECUTED_EXAMPLES, README, REPO, doc_pages

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

README_MAX_LINES = 250
FENCE = re.compile(r"(?:<!-- ([\w-]+) -->\n)?(?:[^\n`]*`[^`\n]+`[^\n]*\n+)?```(\w*)\n(.*?)```", re.S)
# The markers each kind of block may carry (a Python block: <!-- example-NAME -->, see test_docs).
TOML_MARKERS = {"example-entry-points", "suite-fragment"}
TEXT_MARKERS = {"layout", "record-fields", "example-error", "signature"}


def blocks(page: Path) -> list[tuple[str | None, str, str]]:
    """``(marker, language, text)`` of every fenced block of ``page``; the marker is the
    ``<!-- NAME -->`` line right before it (or before the line naming its file)."""
    return [(m.group(1), m.group(2), m.group(3)) for m in FENCE.finditer(page.read_text())]


def all_blocks(language: str | None = None):
    """``(page, marker, text)`` of every block of the README and docs/ (of one language, if given)."""
    for page in doc_pages():
        for marker, lang, text in blocks(page):
            if language is None or lang == language:
                yield page.relative_to(REPO), marker, text


def test_every_python_block_is_an_example_a_test_runs():
    import test_docs

    seen = []
    for page, marker, _ in all_blocks("python"):
        assert marker and marker.startswith("example-"), f"{page}: a Python block without an <!-- example-NAME --> marker"
        seen.append(marker.removeprefix("example-"))
    assert sorted(seen) == sorted(EXECUTED_EXAMPLES), "every example once, and every example in the docs"
    for test in EXECUTED_EXAMPLES.values():
        assert callable(getattr(test_docs, test, None)), test


def test_every_block_is_of_a_language_and_marker_a_test_checks():
    for page in doc_pages():
        for marker, lang, _ in blocks(page):
            where = page.relative_to(REPO)
            if lang == "toml":
                assert marker in TOML_MARKERS, f"{where}: a TOML block must be marked one of {sorted(TOML_MARKERS)}"
            elif lang in ("", "text"):
                assert marker in TEXT_MARKERS, f"{where}: a text block must be marked one of {sorted(TEXT_MARKERS)}"
            elif lang == "bash":
                assert marker is None, (where, marker)
            else:
                assert lang == "python", f"{where}: a ```{lang} block: no test checks that language"


# ----------------------------------------------------------------------------- TOML


def test_toml_blocks_parse_and_suite_fragments_load(write_suite):
    """A suite fragment, added to a small suite, is a valid suite (a wrong field name or value fails)."""
    from harness.run.suite import load_suite

    fragments = 0
    for page, marker, text in all_blocks("toml"):
        data = tomllib.loads(text)
        if marker != "suite-fragment":
            continue
        suite = tiny_suite()
        for key, value in data.items():
            suite[key] = {**suite.get(key, {}), **value} if isinstance(value, dict) else value
        loaded = load_suite(write_suite(dump_toml(suite), f"fragment{fragments}.toml"))
        for label in data.get("methods", {}):
            assert (label, 1) in loaded.method_configs, (page, label)
        fragments += 1
    assert fragments >= 2


# ----------------------------------------------------------------------------- shell commands


def _commands() -> list[tuple[Path, list[str]]]:
    """Every command line of the bash blocks, split as a shell would (comments dropped)."""
    out = []
    for page, _, text in all_blocks("bash"):
        for line in text.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append((page, words))
    return out


def _existing(path: str) -> bool:
    """A path a command names: results/runs/ is scratch (the user's own runs), /tmp and /shared
    are the user's; everything else must be in the checkout."""
    return path.startswith(("results/runs", "/")) or (REPO / path).exists()


def _check_ddbench(page: Path, words: list[str]) -> None:
    from harness.evaluation.protocols import PROTOCOLS
    from harness.report import view_names
    from harness.run.cli import build_parser

    try:
        args = build_parser().parse_args(words[1:])
    except SystemExit:
        pytest.fail(f"{page}: `{shlex.join(words)}` does not parse")
    for attr in ("suite", "target"):
        if getattr(args, attr, None):
            assert _existing(getattr(args, attr)), (page, words)
    for folder in getattr(args, "dirs", None) or ():
        assert _existing(folder), (page, words)
    if args.command == "table":
        assert args.view in (*view_names(), "all"), (page, words)
    if args.command == "eval":
        assert args.protocol in PROTOCOLS.names(), (page, words)
    for override in getattr(args, "set", None) or ():
        field, _, value = override.partition("=")
        assert field and value, (page, override)
        if args.command != "eval":
            tomllib.loads(f"v = {value}")  # a TOML value, as --set reads it


def _tox_envs() -> set[str]:
    ini = (REPO / "tox.ini").read_text()
    return {"py"} | set(re.findall(r"^\[testenv:([\w-]+)\]", ini, re.M))


def _check_script(page: Path, words: list[str]) -> None:
    script = next(w for w in words if w.endswith(".py"))
    source = (REPO / script).read_text()
    for word in words:
        if word.startswith("--"):
            option = word.split("=")[0]
            assert f'"{option}"' in source, f"{page}: {script} has no option {option}"


def test_every_command_line_is_valid():
    seen = set()
    for page, words in _commands():
        tool = words[0]
        seen.add(tool)
        if tool == "ddbench":
            _check_ddbench(page, words)
        elif tool == "tox":
            assert words[1] == "-e" and words[2] in _tox_envs(), (page, words)
        elif tool == "python" and words[1].startswith("benchmarks/"):
            _check_script(page, words)
        elif tool == "python":
            assert words[1:4] == ["-m", "pip", "install"], (page, words)
        elif tool == "pytest":
            assert all(_existing(w) for w in words[1:] if not w.startswith("-")), (page, words)
        else:
            assert tool == "ray" and words[1] == "start", f"{page}: no check for `{shlex.join(words)}`"
    assert {"ddbench", "tox", "python"} <= seen


def test_the_suite_error_shown_is_the_one_a_run_prints(tmp_path, monkeypatch, cli):
    """docs/suites.md's example error, produced by the smoke suite with the window it shows."""
    (page, _, text), = [b for b in all_blocks() if b[1] == "example-error"]
    command, shown = text.strip().splitlines()
    argv = shlex.split(command.removeprefix("$ "))
    assert argv[:2] == ["ddbench", "run"]
    window, unroll = map(int, re.search(r"window \((\d+)\) must be <= unroll \((\d+)\)", shown).groups())
    smoke = tomllib.loads((REPO / "suites" / "smoke.toml").read_text())
    assert smoke["methods"]["tbptt"]["unroll"] == unroll
    smoke["methods"]["tbptt"]["window"] = window
    (tmp_path / argv[2]).write_text(dump_toml(smoke))
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*argv[1:], "--out", tmp_path / "out")
    assert code == 2 and err.strip() == shown
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- text blocks


def test_the_layout_map_names_what_exists_and_every_layer():
    (page, _, text), = [b for b in all_blocks() if b[1] == "layout"]
    named = [line.split()[0] for line in text.splitlines() if line and not line.startswith(" ")]
    for path in named:
        assert (REPO / path).is_dir(), f"{page}: {path} does not exist"
    layers = {p.parent.relative_to(REPO).as_posix() + "/" for p in (REPO / "harness").glob("*/__init__.py")}
    assert layers <= set(named), f"{page} leaves out {sorted(layers - set(named))}"
    top = {p.name + "/" for p in REPO.iterdir() if p.is_dir() and p.name in
           ("harness", "methods", "suites", "tests", "benchmarks", "results", "docs")}
    assert top <= set(named)


def _names_in_braces(text: str, section: str) -> set[str]:
    body = re.search(rf"^{section}:\s*\{{(.*?)\}}\s*$", text, re.S | re.M).group(1)
    body = re.sub(r'"[^"]*"', "", body)
    while re.search(r"\([^()]*\)", body):
        body = re.sub(r"\([^()]*\)", "", body)
    body = re.sub(r"\[[^\]]*\]", "", body)  # a list's element fields (anytime's curve points)
    return {n.split(":")[0].strip() for n in body.split(",") if n.strip() and n.strip() != "..."}


def test_the_record_fields_listed_are_the_schemas():
    from harness.report import schema

    (page, _, text), = [b for b in all_blocks() if b[1] == "record-fields"]
    words = set(re.findall(r"\b[a-z_][a-z0-9_]*\b", text))
    missing = set(schema.RunRecord.model_fields) - words
    assert not missing, f"{page} does not list the record fields {sorted(missing)}"
    for section, model in (("eval", schema.EvalSection), ("distill", schema.DistillSection),
                           ("scores", schema.ScoresSection), ("anytime", schema.AnytimeSection)):
        listed = _names_in_braces(text, section)
        assert listed == set(model.model_fields), (page, section, listed ^ set(model.model_fields))


def test_the_signature_shown_is_meta_gradients():
    import inspect

    import harness

    (page, _, text), = [b for b in all_blocks() if b[1] == "signature"]
    name, params = re.fullmatch(r"harness\.(\w+)\((.*)\)", text.strip()).groups()
    assert [p.strip() for p in params.split(",")] == list(inspect.signature(getattr(harness, name)).parameters), page


# ----------------------------------------------------------------------------- the README


def test_the_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    # The two commands, exactly as CI runs the second one (.ci/run) and the demo is defined.
    assert "```bash\npython -m pip install tox\ntox -e demo " in text and "\ntox -e py " in text
    assert "tox -e py" in (REPO / ".ci" / "run").read_text()
    assert {"demo", "py"} <= _tox_envs()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in text, f"the README does not link docs/{page.name}"


def test_the_method_table_has_a_row_for_every_registered_method():
    from harness.method import list_methods
    from harness.report.references import REFERENCES

    text = README.read_text()
    table = text[text.index("<!-- method-table -->"):]
    table = table[:table.index("\n\n")]
    rows = re.findall(r"^\| `(\w+)` \|", table, re.M)
    assert len(rows) == len(set(rows))
    assert set(list_methods()) <= set(rows), sorted(set(list_methods()) - set(rows))
    # A row is a registered method or one ddbench cites (a method landing with its docs).
    assert set(rows) <= set(list_methods()) | set(REFERENCES), sorted(set(rows) - set(list_methods()))


def test_every_relative_link_resolves():
    for page in doc_pages():
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)} links to {target}, which is missing"
