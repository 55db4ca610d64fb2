"""Config loading: types, interpolation, overrides, positions, and the bad-config corpus."""

from __future__ import annotations

from pathlib import Path

import pytest

from flared.cli import main
from flared.config import yamlpos
from flared.config.loader import ConfigError, load_config
from flared.config.units import format_duration, parse_duration, parse_size

CORPUS = sorted((Path(__file__).parent / "bad_configs").glob("*.yaml"))
BASE = 'bots:\n  - name: hermes\n    model: {provider: custom, base_url: "http://127.0.0.1:9/v1"}\n'


def write(tmp_path: Path, text: str, name: str = "hermes-flare.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("7d", 604800), ("1h30m", 5400), ("500ms", 0.5), (12, 12)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["15 minutes", "m", "-5s", "", True, "1y"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_duration_round_trip() -> None:
    for s in (30.0, 900.0, 3600.0, 86400.0, 0.25):
        assert parse_duration(format_duration(s)) == s


@pytest.mark.parametrize(
    ("text", "size"), [("1MiB", 1024**2), ("64KiB", 65536), ("1MB", 10**6), ("2GiB", 2 * 1024**3), (5, 5)]
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_and_paths_resolve_relative_to_the_file(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, BASE), environ={})
    cfg = loaded.config
    assert cfg.state_dir == str(tmp_path / ".flare")
    # beside the state dir, never in it: `make clean` deletes the state dir
    assert cfg.store.url == f"file://{tmp_path / '.flare-store'}"
    assert cfg.snapshots.every == 900
    assert list(cfg.sandboxes) == ["default"]
    assert cfg.bots[0].sandbox == "default"
    assert len(loaded.digest) == 64


def test_interpolation_with_defaults_and_escapes(tmp_path: Path) -> None:
    text = (
        'state_dir: "${STATE:-./s}"\n'
        "bots:\n  - name: hermes\n"
        '    model: {provider: custom, base_url: "http://${HOST}:9/v1", model: "$${LITERAL}"}\n'
    )
    cfg = load_config(write(tmp_path, text), environ={"HOST": "10.0.0.1"}).config
    assert cfg.bots[0].model.base_url == "http://10.0.0.1:9/v1"
    assert cfg.bots[0].model.model == "${LITERAL}"
    assert cfg.state_dir == str(tmp_path / "s")


def test_unset_variable_names_it_and_where(tmp_path: Path) -> None:
    text = BASE.replace('"http://127.0.0.1:9/v1"', '"${MODEL_URL}"')
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    (issue,) = info.value.issues
    assert (issue.line, issue.path) == (3, "bots[0].model.base_url")
    assert "MODEL_URL is not set" in issue.message


def test_empty_optional_is_unset(tmp_path: Path) -> None:
    text = BASE.replace("provider: custom,", "provider: custom, api_key: '${KEY:-}',")
    cfg = load_config(write(tmp_path, text), environ={}).config
    assert cfg.bots[0].model.api_key is None


def test_env_overrides_through_pydantic_settings(tmp_path: Path) -> None:
    env = {
        "FLARE_SNAPSHOTS__EVERY": "5m",
        "FLARE_LOG_LEVEL": "debug",
        "FLARE_RESTORE__ON_UNREACHABLE": "start_fresh",
    }
    cfg = load_config(write(tmp_path, BASE), environ=env).config
    assert cfg.snapshots.every == 300
    assert cfg.log_level == "debug"
    assert cfg.restore.on_unreachable == "start_fresh"


def test_bad_env_override_says_which_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE), environ={"FLARE_SNAPSHOTS__EVERY": "soon"})
    assert "FLARE_SNAPSHOTS__EVERY" in str(info.value)


def test_several_errors_reported_together(tmp_path: Path) -> None:
    text = (
        "snapshots: {every: never}\n"
        "bots:\n"
        "  - {name: a, sandbox: nope, model: {provider: custom, base_url: 'http://x'}}\n"
        "  - {name: a, model: {provider: custom, base_url: 'http://x'}}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    paths = [i.path for i in info.value.issues]
    assert paths == ["snapshots.every", "bots[0].sandbox", "bots[1].name"]


def test_secrets_never_print(tmp_path: Path) -> None:
    text = BASE.replace("provider: custom,", "provider: custom, api_key: sk-verysecretvalue123,")
    cfg = load_config(write(tmp_path, text), environ={}).config
    assert "sk-verysecretvalue123" not in repr(cfg)
    assert "sk-verysecretvalue123" not in cfg.model_dump_json()


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_bad_config_corpus(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    code = main(["validate", "-c", str(path)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}{expected}" in err, err
    assert "Traceback" not in err


def test_validate_ok_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, BASE)
    assert main(["validate", "-c", str(p), "--json"]) == 0
    assert '"valid": true' in capsys.readouterr().out


def test_missing_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "bin.yaml"
    p.write_bytes(b"\xff\xfe\x00bots")
    assert main(["validate", "-c", str(p)]) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_config_found_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, BASE, "custom.yaml")
    monkeypatch.setenv("HERMES_FLARE_CONFIG", str(p))
    monkeypatch.chdir(tmp_path)
    assert main(["validate"]) == 0


def test_repo_default_config_is_valid() -> None:
    root = Path(__file__).parent.parent
    loaded = load_config(root / "hermes-flare.yaml", environ={})
    bot = loaded.config.bots[0]
    assert bot.api is not None and bot.slack is None
    assert loaded.config.sandboxes["default"].provider == "local"


# --------------------------------------------------------------------------- empty files and bounds


@pytest.mark.parametrize("text", ["", "  \n\n\t\n", "# only a comment\n   # and another\n"])
def test_empty_whitespace_or_comment_only_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    p = write(tmp_path, text)
    assert main(["validate", "-c", str(p)]) == 2
    err = capsys.readouterr().err
    assert f"{p}: the file is empty (or holds only comments)" in err
    assert "bots: []" in err  # what to do instead


def test_no_bots_section_is_refused_and_an_explicit_empty_list_is_fine(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "log_level: debug\n"))
    (issue,) = info.value.issues
    assert (issue.line, issue.path) == (1, "(top level)") and "no `bots:` section" in issue.message
    assert load_config(write(tmp_path, "bots: []\n")).config.bots == []


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("bots: []\nx: " + "[" * 100 + "]" * 100 + "\n", (2, 67), "nested more than 64 levels"),
        ("bots: &b [*b]\n", (1, 7), "a cycle"),
        ("bots: []\na: &a {x: {<<: *a}}\n", (2, 4), "merge key refers to the mapping that contains it"),
        ("bots: []\n? [a, b]\n: 1\n", (2, 3), "mapping keys must be plain scalars"),
        ("bots: []\nx: [" + ",".join(["1"] * 20_001) + "]\n", (2, 39995), "more than 20,000 values"),
    ],
)
def test_yaml_bounds_are_refused_with_a_position(
    tmp_path: Path, text: str, where: tuple[int, int], says: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    (issue,) = info.value.issues
    assert (issue.line, issue.col) == where, issue
    assert says in issue.message


def test_alias_bomb_stops_at_the_limit_at_the_alias(tmp_path: Path) -> None:
    laughs = 'bots: []\na: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
        f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, laughs))
    (issue,) = info.value.issues
    assert issue.line == 6 and "more than 20,000 values once aliases" in issue.message  # `f: &f [*e, ...]`


def test_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    p = tmp_path / "hermes-flare.yaml"
    with p.open("w") as fh:
        fh.write("bots: []\n")
        fh.truncate(50 * 1024 * 1024)  # sparse: 50 MB of NULs after the first line
    with pytest.raises(ConfigError) as info:
        load_config(p)
    (issue,) = info.value.issues
    assert issue.line == 2 and "larger than 1024 KiB" in issue.message


def test_merge_keys_keep_yaml_precedence_and_are_not_duplicates(tmp_path: Path) -> None:
    text = "bots: []\nx-base: &b {a: 1, b: 2}\nx-other: &o {b: 3, c: 4}\nx-use: {<<: [*b, *o], a: 9}\n"
    loc = yamlpos.load(text)
    assert loc.data["x-use"] == {"a": 9, "b": 2, "c": 4}  # own keys, then earlier sources
    assert loc.duplicates == []
    twice = yamlpos.load("bots: []\nbots: []\n")
    assert [p for p, _ in twice.duplicates] == [("bots",)]


def test_streaming_is_on_by_default_and_off_by_itself_with_encryption(tmp_path: Path) -> None:
    plain = load_config(write(tmp_path, BASE), environ={}).config.snapshots.stream
    assert plain.enabled and plain.interval == 1.0
    text = "snapshots: {encryption: {key: correct-horse}}\n" + BASE
    encrypted = load_config(write(tmp_path, text), environ={}).config.snapshots.stream
    assert not encrypted.enabled


def test_liveness_probe_settings_are_checked_with_their_place(tmp_path: Path) -> None:
    text = "liveness: {every: 0s, heartbeat_stale: 20s, failures: 0}\n" + BASE
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    found = {i.path: (i.line, i.message) for i in info.value.issues}
    assert found["liveness.every"] == (1, "must be more than 0s")
    assert (
        found["liveness.heartbeat_stale"][1]
        == "must be more than 30s: Hermes rewrites its heartbeat every 30 s"
    )
    assert "liveness.failures" in found
    ok = load_config(write(tmp_path, "liveness: {every: 1s, failures: 2}\n" + BASE), environ={}).config
    assert (ok.liveness.every, ok.liveness.timeout, ok.liveness.failures) == (1.0, 5.0, 2)
