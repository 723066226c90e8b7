"""`noise learn` proposes TOML that parses back to exactly the paths it found."""

from __future__ import annotations

import tomllib

from shadowreplay.comparer.jsondiff import diff_json
from shadowreplay.commands.noise_learn import NoiseSample, propose

# JSON keys as a backend may send them; diff paths quote them (``$['a\nb']``).
NASTY_KEYS = ['a\nb = "x"\n[comparer]\nignore_paths = ["$"]', 'q"uote', "back\\slash", "\x01\x7f\t\r", "é ünïcode", "'"]


def _paths(keys: list[str]) -> list[str]:
    return [d.path for d in diff_json({k: 1 for k in keys}, {k: 2 for k in keys})]


def test_proposed_toml_survives_control_characters_newlines_and_quotes() -> None:
    sample = NoiseSample()
    paths = _paths(NASTY_KEYS)
    endpoint = 'GET /x\n[comparer]\nroutes = ["injected"]'
    for _ in range(4):
        sample.add("GET /a", set(paths))  # on two endpoints: a global rule
        sample.add("GET /b", set(paths[:2]))
        sample.add(endpoint, {"$['only\nhere']"})  # on one endpoint: an endpoint rule
    text = propose(sample)
    doc = tomllib.loads(text)  # valid TOML, whatever the keys held
    assert sorted(doc) == ["comparer", "ignore_paths"]  # nothing injected, by a comment or a value
    assert doc["ignore_paths"] == sorted(paths[:2])
    rules = {r["match"]: r["ignore_paths"] for r in doc["comparer"]["endpoints"]}
    assert rules == {"GET /a": sorted(paths[2:]), endpoint: ["$['only\nhere']"]}
    assert "#   $['a\\nb" in text  # the comments name the paths too, escaped, one line each
