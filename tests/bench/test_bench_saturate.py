"""saturate's system names: ``baton:P+D[/fixed][/budget=N]`` and ``vllm:DTYPE`` -> configs."""

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


@pytest.mark.parametrize("name", ["baton:1+1/fast", "baton:1+1/budget=x"])
def test_unknown_modes_name_the_system(name):
    with pytest.raises(ValueError, match="modes after"):
        system_config(name, BenchConfig(model="m"))
