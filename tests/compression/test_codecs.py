"""The codecs: whole bodies and flushed streams in gzip, br and zstd, and their options."""

from __future__ import annotations

import sys

import pytest

from bastion.compression import (
    DEFAULT_LEVELS,
    ENCODINGS,
    LEVEL_RANGES,
    available_encodings,
    compress,
    load_codec,
)
from bastion.exceptions import ConfigurationError, MissingDependencyError
from tests.compression.decoders import IncrementalDecoder, decompress

BODY = b'{"id": 1, "name": "an item with a name", "tags": ["a", "b", "c"]}' * 40


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_compress_round_trips(encoding: str) -> None:
    """What compress() produces, the coding's own library decodes to the original."""
    compressed = compress(BODY, encoding)
    assert len(compressed) < len(BODY)
    assert BODY == decompress(compressed, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("bound", ["low", "high"])
def test_every_level_in_range_works(encoding: str, bound: str) -> None:
    """The lowest and the highest accepted level both produce decodable output."""
    low, high = LEVEL_RANGES[encoding]
    level = low if bound == "low" else high
    assert BODY == decompress(compress(BODY, encoding, level), encoding)


@pytest.mark.parametrize(
    ("encoding", "level"), [("gzip", 0), ("gzip", 10), ("br", 12), ("zstd", 20), ("zstd", 0)]
)
def test_levels_out_of_range_are_refused(encoding: str, level: int) -> None:
    """A level outside the coding's range is a configuration error naming the range."""
    with pytest.raises(ConfigurationError, match=f"{encoding} level must be from"):
        load_codec(encoding, level)


def test_unknown_codings_are_refused() -> None:
    """deflate is not produced (its zlib-or-raw ambiguity breaks clients), nor anything else."""
    with pytest.raises(ConfigurationError, match="unknown content coding 'deflate'"):
        compress(BODY, "deflate")


def test_default_levels_are_the_on_the_fly_ones() -> None:
    """Defaults favour speed: brotli 4, zstd 3, gzip 6."""
    assert {"br": 4, "zstd": 3, "gzip": 6} == DEFAULT_LEVELS


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_output_is_deterministic(encoding: str) -> None:
    """Equal bodies compress to equal bytes (gzip carries no timestamp), so variants cache."""
    assert compress(BODY, encoding) == compress(BODY, encoding)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_stream_decodes_after_every_chunk(encoding: str) -> None:
    """Each flushed chunk decodes, on its own, to everything fed so far."""
    stream = load_codec(encoding).stream()
    decoder = IncrementalDecoder(encoding)
    chunks = [b"event one " * 20, b"event two " * 20, b"three"]
    for chunk in chunks:
        assert chunk == decoder.feed(stream.chunk(chunk))
    assert b"tail" == decoder.feed(stream.finish(b"tail"))


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_streamed_body_decodes_as_a_whole(encoding: str) -> None:
    """The concatenated chunks of a stream are one valid compressed body."""
    stream = load_codec(encoding).stream()
    body = stream.chunk(b"a" * 500) + stream.chunk(b"") + stream.finish(b"b" * 500)
    assert b"a" * 500 + b"b" * 500 == decompress(body, encoding)


def test_a_missing_library_removes_its_coding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without brotli installed, br is not available; the others still are."""
    monkeypatch.setitem(sys.modules, "brotli", None)
    assert ("zstd", "gzip") == available_encodings()


def test_building_a_codec_without_its_library_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """load_codec raises MissingDependencyError pointing at bastion[compression]."""
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(MissingDependencyError) as caught:
        load_codec("zstd")
    assert ("zstandard", "compression") == (caught.value.package, caught.value.extra)


def test_gzip_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """With neither library installed, gzip still works."""
    monkeypatch.setitem(sys.modules, "brotli", None)
    monkeypatch.setitem(sys.modules, "zstandard", None)
    assert ("gzip",) == available_encodings()
    assert BODY == decompress(load_codec("gzip").compress(BODY), "gzip")
