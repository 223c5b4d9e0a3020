"""--drafter self: cutting blocks out of a GGUF, the candidates of the search, and the cut draft on a real model."""

from __future__ import annotations

import errno
import struct

import numpy as np
import pytest

from spec_cli import selfdraft
from spec_cli.errors import SpecError
from spec_cli.llama import cut
from spec_cli.llama.cut import check_cut, format_blocks, kept_blocks, read_gguf, valid_cut, write_cut


def _s(text: str) -> bytes:
    b = text.encode()
    return struct.pack("<Q", len(b)) + b


def tiny_gguf(path, arch="llama", n_blocks=3, tensor_bytes=100):
    """A GGUF with a per-block metadata array and one tensor per block, each filled with its own byte."""
    kv = [
        _s("general.architecture") + struct.pack("<I", 8) + _s(arch),
        _s(f"{arch}.block_count") + struct.pack("<II", 4, n_blocks),
        _s(f"{arch}.attention.head_count")
        + struct.pack("<IIQ", 9, 4, n_blocks)
        + struct.pack(f"<{n_blocks}I", *range(10, 10 + n_blocks)),
        _s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 2) + _s("a") + _s("b"),
    ]
    names = ["token_embd.weight"] + [f"blk.{i}.ffn_up.weight" for i in range(n_blocks)] + ["output_norm.weight"]
    infos, datas, off = [], [], 0
    for i, name in enumerate(names):
        infos.append(_s(name) + struct.pack("<IQI", 1, tensor_bytes // 4, 0) + struct.pack("<Q", off))
        datas.append(bytes([i]) * tensor_bytes)
        off += -(-tensor_bytes // 32) * 32
    head = b"GGUF" + struct.pack("<IQQ", 3, len(names), len(kv)) + b"".join(kv) + b"".join(infos)
    head += bytes(-len(head) % 32)
    body = b"".join(d + bytes(-len(d) % 32) for d in datas)
    path.write_bytes(head + body)
    return path


def tensor_bytes(path, name):
    g = read_gguf(path)
    t = next(t for t in g.tensors if t.name == name)
    with open(path, "rb") as f:
        f.seek(g.data_start + t.offset)
        return f.read(100)


def test_cut_keeps_the_chosen_blocks_renumbered_and_byte_for_byte(tmp_path):
    src = tiny_gguf(tmp_path / "t.gguf")
    dst = tmp_path / "cut.gguf"
    write_cut(src, dst, [0, 2])
    g = read_gguf(dst)
    assert g.n_blocks == 2
    assert kept_blocks(dst) == [0, 2]
    assert g.values["llama.attention.head_count"] == [10, 12]  # the per-block array follows its blocks
    assert g.values["tokenizer.ggml.tokens"] == ["a", "b"]
    assert sorted(g.block_tensors()) == [0, 1]
    assert tensor_bytes(dst, "blk.1.ffn_up.weight") == tensor_bytes(src, "blk.2.ffn_up.weight") == bytes([3]) * 100
    assert tensor_bytes(dst, "token_embd.weight") == bytes([0]) * 100
    assert tensor_bytes(dst, "output_norm.weight") == bytes([4]) * 100


@pytest.mark.parametrize("failure", [KeyboardInterrupt(), OSError(errno.ENOSPC, "No space left on device")])
def test_an_interrupted_or_full_disk_cut_leaves_nothing(tmp_path, monkeypatch, failure):
    src = tiny_gguf(tmp_path / "t.gguf")
    dst = tmp_path / "out" / "cut.gguf"
    dst.parent.mkdir()
    calls = []

    def copy_then_fail(fin, out, n):
        calls.append(n)
        out.write(fin.read(n))
        if len(calls) == 2:
            raise failure

    monkeypatch.setattr(cut, "_copy", copy_then_fail)
    with pytest.raises((KeyboardInterrupt, SpecError)) as e:
        write_cut(src, dst, [0, 1])
    if isinstance(failure, OSError):
        assert "No space left" in str(e.value) and "\n" not in str(e.value)
    assert list(dst.parent.iterdir()) == []


def test_an_architecture_that_cannot_be_cut_gets_one_line(tmp_path):
    src = tiny_gguf(tmp_path / "t.gguf", arch="llama4")
    with pytest.raises(SpecError) as e:
        write_cut(src, tmp_path / "cut.gguf", [0])
    assert "'llama4'" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "cut.gguf").exists()


def test_gemma3_blocks_keep_their_kind_of_attention():
    check_cut("gemma3", 18, list(range(12)))
    with pytest.raises(SpecError, match="block 11 is global-attention but would become block 6"):
        check_cut("gemma3", 18, [0, 1, 2, 3, 4, 5, 11])
    assert not valid_cut("gemma3", [0, 2, 4, 6, 8, 10])
    for keep, _ in selfdraft.candidates("gemma3", 18):
        assert valid_cut("gemma3", keep), keep
    for keep in selfdraft.neighbours("gemma3", 18, list(range(12))):
        assert valid_cut("gemma3", keep) and len(keep) < 18


def test_candidates_and_moves():
    first = selfdraft.candidates("qwen2", 28)
    assert ([0, 1, 2, 3, 4, 5, 6], "prefix") in first
    assert all(k[0] == 0 and k[-1] == 27 for k, how in first if how in ("spaced", "ends"))
    moves = selfdraft.neighbours("qwen2", 4, [0, 1, 3])
    assert sorted(map(tuple, moves)) == [(0, 1), (0, 3), (1, 3)]  # adding block 2 back is the whole model
    assert format_blocks([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


def test_score_is_the_speedup_formula():
    # a free, always-right draft on a flat curve gains close to the draft length; a dear one loses
    s, g = selfdraft.score(1.0, 0.0, [10.0] * 9)
    assert g == 8 and s == pytest.approx(9.0)
    s, g = selfdraft.score(0.5, 12.0, [10.0] * 9)
    assert s < 1.0


# --- on the real Gemma 3 270M ---------------------------------------------------

KEEP = list(range(12))  # blocks 0-11 of 18: a draft different enough from the target to tell apart


@pytest.fixture(scope="module")
def cut_draft(gemma_path):
    from spec_cli.llama import Model

    path = selfdraft.derive(gemma_path, KEEP)
    m = Model(path, n_ctx=2048, label="draft")
    yield path, m
    m.close()


def test_cut_loads_with_the_targets_vocabulary_and_the_chosen_blocks(gemma_path, cut_draft, target):
    from spec_cli.llama import check_compatible

    path, draft = cut_draft
    assert kept_blocks(path) == KEEP and read_gguf(path).n_blocks == 12
    assert draft.n_vocab == target.n_vocab
    check_compatible(target, draft)
    assert selfdraft.derive(gemma_path, KEEP) == path  # cached: the same file, not written again
    assert path.stat().st_size < gemma_path.stat().st_size


@pytest.mark.parametrize("draft_len", [2, 5])
def test_greedy_with_the_self_draft_equals_the_target_alone(target, cut_draft, target_only, draft_len):
    from spec_cli.decode import Engine, GenerateOptions
    from spec_cli.drafters import ModelDrafter
    from spec_cli.strategy import FixedStrategy
    from tests.neartie import assert_same_or_near_tie

    _, draft = cut_draft
    draft.reset()
    toks, reference = target_only("The capital of France is")
    res = Engine(target, FixedStrategy(ModelDrafter(draft), draft_len)).generate(toks, GenerateOptions(max_tokens=32))
    assert res.stats.drafted > 0 and 0 < res.stats.accepted < res.stats.drafted
    assert_same_or_near_tie(target, toks, reference, res.tokens)


def test_sampled_first_token_with_the_self_draft_keeps_the_target_distribution(target, cut_draft):
    from spec_cli.decode import Engine, GenerateOptions
    from spec_cli.drafters import ModelDrafter
    from spec_cli.sampling import SamplingParams, shape
    from spec_cli.strategy import FixedStrategy
    from tests.chisquare import first_token_chi2

    _, draft = cut_draft
    draft.reset()
    params = SamplingParams(temperature=1.0, top_k=8)
    prompt = target.tokenize("The capital of France is")
    p = shape(target.sync(prompt)[1].copy(), params)
    q = shape(draft.sync(prompt)[1].copy(), params)
    ids = np.union1d(p.ids, q.ids)
    assert 0.5 * np.abs(p.probs_at(ids) - q.probs_at(ids)).sum() > 0.2, "cut and target too alike for the test to have power"
    runs = 400
    engine = Engine(target, FixedStrategy(ModelDrafter(draft), 2))
    firsts = np.array([
        engine.generate(prompt, GenerateOptions(max_tokens=2, seed=seed, sampling=params)).tokens[0]
        for seed in range(runs)
    ])  # fmt: skip
    assert np.isin(firsts, p.ids).all()
    chi2, obs, exp = first_token_chi2(firsts, p, runs)
    assert chi2 < 26.2, (chi2, obs, exp)  # 99.9 % quantile of chi-square with <= 8 degrees of freedom
    exp_q = q.probs_at(p.ids) * runs
    assert ((obs - exp_q) ** 2 / np.maximum(exp_q, 1.0)).sum() > chi2  # the draft's own distribution fails it
