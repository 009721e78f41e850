"""saturate's system names: ``baton:P+D[/fixed][/budget=N][/lof]``, ``vllm:DTYPE[/lof]`` and ``orca[/lof]``
-> configs."""

from __future__ import annotations

import pytest

from baton.bench.saturate import system_config
from baton.bench.systems import BenchConfig


def test_system_names_map_to_configs():
    base = BenchConfig(model="m", log_path="/tmp/x/saturate_vllm.log")
    kind, cfg = system_config("baton:1+2", base)
    assert kind == "baton" and (cfg.prefill_cpus, cfg.decode_cpus, cfg.share_cores) == (1.0, 2.0, True)
    kind, cfg = system_config("baton:1+1/fixed/budget=512", base)
    assert (cfg.share_cores, cfg.max_prefill_tokens) == (False, 512)
    kind, cfg = system_config("vllm:bfloat16", base)
    assert kind == "vllm" and cfg.vllm_dtype == "bfloat16"
    assert cfg.log_path == "/tmp/x/saturate_vllm_bfloat16.log"  # one log per vLLM system kept up
    assert system_config("orca", base) == ("orca", base)


def test_lof_mode_sets_the_queue_order_of_any_system():
    base = BenchConfig(model="m", log_path="/tmp/x/saturate_vllm.log")
    kind, cfg = system_config("baton:1+1/prefill=2/lof", base)
    assert (kind, cfg.prefill_workers, cfg.queue_order) == ("baton", 2, "lof")
    kind, cfg = system_config("vllm:bfloat16/lof", base)
    assert (kind, cfg.vllm_dtype, cfg.queue_order) == ("vllm", "bfloat16", "lof")
    assert cfg.log_path == "/tmp/x/saturate_vllm_bfloat16_lof.log"  # beside the fcfs one, not over it
    kind, cfg = system_config("vllm:bfloat16/ngram=4", base)
    assert (cfg.ngram, cfg.queue_order, cfg.log_path) == (
        4,
        "fcfs",
        "/tmp/x/saturate_vllm_bfloat16_ngram4.log",
    )
    kind, cfg = system_config("orca/lof", base)
    assert (kind, cfg.queue_order) == ("orca", "lof")
    assert system_config("baton:1+1", base)[1].queue_order == "fcfs"


@pytest.mark.parametrize("name", ["baton:1+1/fast", "baton:1+1/budget=x", "baton:1+1/ngram=4"])
def test_unknown_modes_name_the_system(name):
    with pytest.raises(ValueError, match="modes after"):
        system_config(name, BenchConfig(model="m"))


@pytest.mark.parametrize("name", ["vllm:bfloat16/fixed", "orca/budget=8", "orca/ngram=2"])
def test_other_systems_take_only_their_modes(name):
    with pytest.raises(ValueError, match="the modes of vllm"):
        system_config(name, BenchConfig(model="m"))


@pytest.mark.parametrize("isolate", [False, True])
def test_run_systems_takes_turns_and_isolate_starts_each_burst_alone(
    tiny_lm, model_dir, monkeypatch, isolate
):
    """Real in-process systems on a tiny model: every system runs each repeat in turn; shared, each
    starts once and stays up; isolated, each burst gets a system started for it and closed after."""
    from baton.bench import saturate
    from baton.core.params import SamplingParams
    from baton.core.request import Request

    lm = tiny_lm("llama")
    events: list[tuple[str, str]] = []
    make = saturate.make_system

    def spy(kind, cfg, lm_):
        system = make(kind, cfg, lm_)
        events.append(("start", kind))
        close = system.close
        system.close = lambda: (events.append(("close", kind)), close())[1]
        return system

    monkeypatch.setattr(saturate, "make_system", spy)
    trace = [
        (Request(f"r{i}", tuple(range(5 + i, 20 + i)), SamplingParams(max_tokens=4, ignore_eos=True), i), 0.0)
        for i in range(3)
    ]
    base = BenchConfig(model=str(model_dir("llama")), max_batch_size=4, max_seq_len=64, threads=1)
    results = saturate.run_systems(["static", "orca"], base, lm, trace, repeats=2, isolate=isolate)
    assert {n: len(rs) for n, rs in results.items()} == {"static": 2, "orca": 2}
    assert all(r.ok and r.n_out == 4 for rs in results.values() for run in rs for r in run.records)
    starts = [k for e, k in events if e == "start"]
    closes = [k for e, k in events if e == "close"]
    if isolate:
        assert starts == ["static", "orca", "static", "orca"] and closes == starts
        assert [e for e, _ in events] == ["start", "close"] * 4  # never two systems up at once
    else:
        assert starts == ["static", "orca"] and closes == ["orca", "static"]
