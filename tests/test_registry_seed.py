"""The default store is seeded with the shipped pretrained models on first use, atomically, and only once."""

import json

from stemforge import registry
from stemforge.registry import store as store_mod


def fake_store(root):
    (root / "m" / "1.0.0").mkdir(parents=True)
    (root / "m" / "1.0.0" / "card.json").write_text("{}")
    (root / "index.json").write_text(json.dumps({"format": "x"}))
    return root


def test_seed_copies_a_shipped_store_once(tmp_path):
    src = fake_store(tmp_path / "shipped")
    dest = tmp_path / "home" / "registry"
    assert store_mod.seed_store(dest, src)
    assert (dest / "index.json").read_text() == (src / "index.json").read_text()
    assert (dest / "m" / "1.0.0" / "card.json").exists()
    (dest / "index.json").write_text('{"mine": 1}')
    assert not store_mod.seed_store(dest, src)  # an existing store is never overwritten
    assert json.loads((dest / "index.json").read_text()) == {"mine": 1}
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".seed-")]  # no temporary left


def test_seed_fills_an_empty_folder_and_skips_without_a_shipped_store(tmp_path):
    src = fake_store(tmp_path / "shipped")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert store_mod.seed_store(empty, src) and (empty / "index.json").exists()
    assert not store_mod.seed_store(tmp_path / "other", tmp_path / "nothing-here")
    assert not (tmp_path / "other").exists()


def test_default_store_is_seeded(tmp_path, monkeypatch):
    src = fake_store(tmp_path / "shipped")
    monkeypatch.delenv("STEMFORGE_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(store_mod, "SHIPPED_STORE", src)
    monkeypatch.setattr(store_mod.seed_store, "__defaults__", (src,))
    url = registry.default_store_url()
    assert (tmp_path / "xdg" / "stemforge" / "registry" / "index.json").exists()
    assert url == str(tmp_path / "xdg" / "stemforge" / "registry")


def test_an_older_store_gets_the_newly_shipped_versions_and_keeps_its_aliases(tmp_path):
    from stemforge.registry.index import empty_index

    dest = tmp_path / "old-store"
    dest.mkdir()
    index = empty_index()
    (dest / "index.json").write_text(json.dumps(index))
    shipped = json.loads((store_mod.SHIPPED_STORE / "index.json").read_text())["models"]
    added = store_mod.sync_shipped(dest)
    want = sorted(f"{n}:{v}" for n, m in shipped.items() for v in m["versions"])
    assert sorted(added) == want
    have = json.loads((dest / "index.json").read_text())["models"]
    for name, m in shipped.items():
        assert have[name]["aliases"] == m["aliases"]
    assert store_mod.sync_shipped(dest) == []  # nothing twice
    # a store whose own "stable" points elsewhere keeps it
    name = sorted(shipped)[0]
    idx = json.loads((dest / "index.json").read_text())
    version = sorted(idx["models"][name]["versions"])[0]
    idx["models"][name]["versions"] = {version: idx["models"][name]["versions"][version]}
    idx["models"][name]["aliases"] = {"stable": version}
    (dest / "index.json").write_text(json.dumps(idx))
    store_mod.sync_shipped(dest)
    assert json.loads((dest / "index.json").read_text())["models"][name]["aliases"]["stable"] == version
