"""The shared event-hook base and the file digest of the core layer."""

from __future__ import annotations

import pytest

from heldout.core import Callback, Technique, file_sha256


def test_stateless_components_refuse_state_naming_their_kind():
    class Plain(Technique):
        pass

    class Watcher(Callback):
        pass

    assert Plain().state_dict() == {} and Watcher().state_dict() == {}
    Plain().load_state_dict({})  # nothing to load is fine
    with pytest.raises(ValueError, match=r"technique Plain keeps no state but was given \['x'\]"):
        Plain().load_state_dict({"x": 1})
    with pytest.raises(ValueError, match=r"callback Watcher keeps no state but was given"):
        Watcher().load_state_dict({"x": 1})


def test_file_sha256_is_the_standard_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")  # FIPS 180-2's example message
    assert file_sha256(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
