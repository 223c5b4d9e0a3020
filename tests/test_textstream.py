from spec_cli.textstream import TextStream


def feed_all(stream, pieces):
    return "".join(stream.feed(p) for p in pieces) + stream.flush()


def test_plain_text_passes_through():
    s = TextStream()
    assert feed_all(s, [b"Hello", b" world"]) == "Hello world"


def test_utf8_split_across_tokens_is_held_until_complete():
    s = TextStream()
    euro = "€".encode()  # 3 bytes
    assert s.feed(b"a" + euro[:1]) == "a"
    assert s.feed(euro[1:2]) == ""
    assert s.feed(euro[2:]) == "€"


def test_invalid_bytes_are_replaced_not_fatal():
    s = TextStream()
    assert feed_all(s, [b"\xff", b"ok"]) == "\ufffdok"


def test_stop_string_across_tokens():
    s = TextStream(stop=["\n\n"])
    out = [s.feed(b"one\n"), s.feed(b"\ntwo")]
    assert "".join(out) == "one"
    assert s.stopped and s.released == "one"
    assert s.feed(b"more") == "" and s.flush() == ""


def test_partial_stop_prefix_is_released_when_it_diverges():
    s = TextStream(stop=["END"])
    assert s.feed(b"the E") == "the "
    assert s.feed(b"Nx") == "ENx"
    assert not s.stopped
