"""First-fit-decreasing packing, chat tokenization with an assistant-only mask, and the shard format."""

from __future__ import annotations

import math
import string

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from nemo_ext.data.packing import first_fit_decreasing, pack_stream, packing_efficiency
from nemo_ext.data.prompts import IM_END, SPECIAL_TOKENS, render_prompt, render_response
from nemo_ext.data.shards import (
    METADATA,
    PackedDataset,
    iter_bins,
    make_bin,
    read_metadata,
    shard_name,
    write_shard,
)
from nemo_ext.data.tokenize import TokenizedSample, tokenize_chat, tokenize_chats
from nemo_ext.io import atomic_write_json
from nemo_ext.prep.pack_job import fit_to_bin, length_histogram


def build_char_tokenizer(directory) -> str:
    """Save a tokenizer with one token per printable character plus the chat special tokens."""
    vocab = {"<unk>": 0, **{c: i + 1 for i, c in enumerate(sorted(set(string.printable)))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", additional_special_tokens=list(SPECIAL_TOKENS)
    )
    fast.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return AutoTokenizer.from_pretrained(build_char_tokenizer(tmp_path_factory.mktemp("chartok")))


def naive_first_fit_decreasing(lengths, bin_size):
    """Reference: scan every open bin for each item, longest item first."""
    free, bins = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        b = next((b for b, f in enumerate(free) if f >= lengths[i]), len(bins))
        if b == len(bins):
            free.append(bin_size)
            bins.append([])
        free[b] -= lengths[i]
        bins[b].append(i)
    return bins


# ---- packing -------------------------------------------------------------------------------------


def test_ffd_hand_example():
    # Longest first: 7 -> bin 0 (free 3), 6 -> bin 1 (free 4), 5 -> bin 2 (free 5),
    # 4 -> bin 1 (bin 0 has only 3; free 0), 3 -> bin 0 (free 0), 2 -> bin 2 (free 3).
    assert first_fit_decreasing([5, 7, 3, 2, 4, 6], 10) == [[1, 2], [5, 4], [0, 3]]


def test_ffd_ties_keep_input_order_and_edge_cases():
    assert first_fit_decreasing([3, 3, 3], 6) == [[0, 1], [2]]
    assert first_fit_decreasing([10], 10) == [[0]]
    assert first_fit_decreasing([], 10) == []


@pytest.mark.parametrize("lengths", [[0, 1], [11], [-1]])
def test_ffd_rejects_lengths_outside_1_to_bin_size(lengths):
    with pytest.raises(ValueError, match="bin_size=10"):
        first_fit_decreasing(lengths, 10)


def test_ffd_matches_naive_scan():
    rng = np.random.default_rng(1)
    for n, bin_size in [(1, 5), (7, 9), (300, 100), (1000, 4096)]:
        lengths = rng.integers(1, bin_size + 1, n).tolist()
        assert first_fit_decreasing(lengths, bin_size) == naive_first_fit_decreasing(lengths, bin_size)


def test_ffd_long_tail_within_one_percent_of_lower_bound():
    rng = np.random.default_rng(0)
    bin_size = 32768
    # R1-like lengths: median ~4K tokens, long tail clipped at the bin size.
    lengths = np.clip(rng.lognormal(np.log(4096), 1.0, 20_000).round(), 64, bin_size).astype(int)
    bins = first_fit_decreasing(lengths, bin_size)
    lower_bound = math.ceil(lengths.sum() / bin_size)
    assert len(bins) <= 1.01 * lower_bound
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert max(lengths[b].sum() for b in bins) <= bin_size
    assert packing_efficiency(lengths, len(bins), bin_size) >= 0.99


def test_pack_stream_never_mixes_buffers_and_uses_global_indices():
    # Buffer 1 = [6, 6, 4] -> [[0, 2], [1]]; buffer 2 = [4, 6] -> [[4, 3]]; nothing crosses over.
    assert list(pack_stream([6, 6, 4, 4, 6], 10, 3)) == [[[0, 2], [1]], [[4, 3]]]
    with pytest.raises(ValueError, match="buffer_size"):
        next(pack_stream([1], 10, 0))


def test_packing_efficiency_by_hand():
    assert packing_efficiency([3, 5, 8], 2, 10) == 0.8
    assert packing_efficiency([], 0, 10) == 0.0


# ---- tokenization --------------------------------------------------------------------------------


def test_tokenize_chat_masks_exactly_the_assistant_tokens(tokenizer):
    sample = tokenize_chat(tokenizer, "What is 2+2?", "<think>\nhi</think> 4", "math")
    prompt = render_prompt("What is 2+2?", "math")
    # One token per character, special tokens one each: <|im_start|> x3, <|im_end|> x2, <think>.
    expected_prompt_len = len(prompt) - 3 * (len("<|im_start|>") - 1) - 2 * (len(IM_END) - 1) - (7 - 1)
    assert sample.prompt_len == expected_prompt_len
    # Response "hi</think> 4<|im_end|>" = h, i, </think>, ' ', 4, <|im_end|>: 6 trained tokens.
    assert len(sample) == expected_prompt_len + 6
    assert sample.loss_mask.tolist() == [0] * expected_prompt_len + [1] * 6
    assert sample.loss_mask.dtype == np.int8 and sample.input_ids.dtype == np.int32
    assert tokenizer.decode(sample.input_ids[: sample.prompt_len]) == prompt
    assert tokenizer.decode(sample.input_ids[sample.prompt_len :]) == render_response("<think>\nhi</think> 4")
    assert sample.input_ids[-1] == tokenizer.convert_tokens_to_ids(IM_END)


def test_tokenize_chats_batches_like_single_calls(tokenizer):
    questions, outputs, tasks = ["a", "bb", "ccc"], ["x", "yy", "zzz"], ["math", "code", "math"]
    batch = tokenize_chats(tokenizer, questions, outputs, tasks)
    for s, q, o, t in zip(batch, questions, outputs, tasks, strict=True):
        single = tokenize_chat(tokenizer, q, o, t)
        assert s.input_ids.tolist() == single.input_ids.tolist() and s.prompt_len == single.prompt_len
    assert tokenize_chats(tokenizer, [], [], []) == []


def test_truncation_and_dropping_of_overlong_samples():
    sample = TokenizedSample(np.arange(10, dtype=np.int32), prompt_len=4)
    assert fit_to_bin(sample, 10, "drop") is sample
    cut = fit_to_bin(sample, 6, "truncate")
    assert cut.input_ids.tolist() == [0, 1, 2, 3, 4, 5] and cut.loss_mask.tolist() == [0, 0, 0, 0, 1, 1]
    assert fit_to_bin(sample, 6, "drop") is None
    assert fit_to_bin(sample, 4, "truncate") is None  # the prompt alone fills the bin: nothing to train


def test_length_histogram_by_hand():
    counts = length_histogram(np.array([1, 1, 31, 32, 33, 40]), 32)  # 32 buckets of width 1, then overflow
    assert counts[1] == 2 and counts[31] == 2 and counts[32] == 2 and sum(counts) == 6


# ---- shards --------------------------------------------------------------------------------------


def test_make_bin_lays_sequences_end_to_end():
    b = make_bin([np.array([5, 6, 7]), np.array([8, 9])], [np.array([0, 1, 1]), np.array([0, 1])])
    assert b["input_ids"].tolist() == [5, 6, 7, 8, 9] and b["input_ids"].dtype == np.int32
    assert b["loss_mask"].tolist() == [0, 1, 1, 0, 1] and b["loss_mask"].dtype == np.int8
    assert b["seq_start_id"].tolist() == [0, 3] and b["seq_start_id"].dtype == np.int32


def _write_pack(directory, shards):
    names = []
    for s, bins in enumerate(shards):
        names.append({"file": shard_name(s), "bins": len(bins)})
        write_shard(directory / shard_name(s), bins)
    atomic_write_json(directory / METADATA, {"bin_size": 64, "shards": names})


def test_shards_round_trip_with_random_access_across_shards_and_row_groups(tmp_path):
    rng = np.random.default_rng(0)
    bins = []
    for i in range(45):
        lengths = rng.integers(1, 20, rng.integers(1, 4))
        seqs = [np.full(n, 1000 * i + j) for j, n in enumerate(lengths)]
        bins.append(make_bin(seqs, [np.arange(n) % 2 for n in lengths]))
    _write_pack(tmp_path, [bins[:20], bins[20:21], bins[21:]])  # 20 bins span two row groups of 16
    assert sorted(p.name for p in tmp_path.iterdir()) == [METADATA] + [shard_name(i) for i in range(3)]

    ds = PackedDataset(tmp_path, cache_groups=2)
    assert len(ds) == 45 and ds.bin_size == 64
    streamed = list(iter_bins(tmp_path))
    for i in [44, 0, 17, 20, 21, 3, 16, 15, -1]:
        for name in ("input_ids", "loss_mask", "seq_start_id"):
            assert ds[i][name].tolist() == bins[i][name].tolist() == streamed[i][name].tolist()
            assert ds[i][name].dtype == bins[i][name].dtype
    with pytest.raises(IndexError, match="45 bins"):
        ds[45]


def test_unfinished_pack_is_refused_with_resume_hint(tmp_path):
    write_shard(tmp_path / shard_name(0), [make_bin([np.array([1])], [np.array([1])])])
    with pytest.raises(FileNotFoundError, match="rerun data_prep/pack.py"):
        PackedDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a finished pack"):
        read_metadata(tmp_path)


def test_failed_atomic_write_leaves_nothing_behind(tmp_path):
    (tmp_path / shard_name(0)).mkdir()  # the rename onto a directory fails
    with pytest.raises(IsADirectoryError):
        write_shard(tmp_path / shard_name(0), [make_bin([np.array([1])], [np.array([1])])])
    assert [p.name for p in tmp_path.iterdir()] == [shard_name(0)]
