"""The burst timeline: roles from process titles, CPU sampled per process, series, and a real run."""

from __future__ import annotations

import math
import subprocess
import sys
import time

import pytest

from baton.bench import timeline
from baton.bench.timeline import Sampler, role_of, series

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_roles_come_from_ray_process_titles():
    assert role_of("ray::DecodeWorker.events", 7, root=1) == "decode"
    assert role_of("ray::PrefillWorker.prefill", 7, root=1) == "prefill"
    assert role_of("/usr/bin/python -m baton.bench.timeline", 1, root=1) == "driver"
    assert role_of(".../ray/core/src/ray/raylet/raylet --node...", 7, root=1) == "ray"


def test_sampler_counts_a_childs_work_under_its_role_and_its_own_as_the_driver():
    # A child burning 0.6 s of CPU (however busy the machine) is a descendant that is no worker: "ray".
    burn = "import time\nwhile time.process_time() < 0.6: pass\ntime.sleep(0.3)"
    child = subprocess.Popen([sys.executable, "-c", burn])
    s = Sampler(0.1).start()
    child.wait()
    c0 = time.process_time()
    while time.process_time() - c0 < 0.3:  # the driver's own work, in the sampler's window
        pass
    time.sleep(0.25)
    samples = s.stop()
    cpu = {role: sum(x["cores"][role] * x["dt"] for x in samples) for role in timeline.ROLES}
    # /proc counts in 10 ms ticks; the child's start-up (interpreter) adds a little before its loop.
    assert 0.5 < cpu["ray"] < 0.9, cpu
    assert 0.25 < cpu["driver"] < 0.6, cpu
    assert cpu["decode"] == cpu["prefill"] == 0.0
    assert all(x["dt"] > 0 and x["cores"]["background"] >= 0 for x in samples)


def test_series_turns_counters_into_rates():
    def sample(t, rows, steps, row_steps, step_ms):
        d = {"rows": rows, "steps": steps, "row_steps": row_steps, "step_ms": step_ms, "forward_ms": 0.0}
        return {"t": t, "dt": 0.5, "cores": dict.fromkeys(timeline.ROLES, 0.25), "decode": d}

    s = series([sample(0.5, 0, 0, 0, 0.0), sample(1.0, 4, 10, 40, 100.0), sample(1.5, 8, 20, 120, 300.0)])
    assert s["t"] == [0.5, 1.0, 1.5] and s["rows"] == [0, 4, 8]
    assert math.isnan(s["steps_per_s"][0]) and s["steps_per_s"][1:] == [20.0, 20.0]
    assert s["ms_per_row_step"][1:] == [2.5, 2.5]
    assert s["decode"] == [0.25, 0.25, 0.25]


@pytest.mark.slow
def test_a_real_burst_on_ray_shows_both_workers_busy(model_dir, tiny_lm, monkeypatch):
    """One timed burst through a real local Ray cluster (tiny model): the sampler sees the decode and
    the prefill actor work, and the decode batch's rows."""
    from baton.bench.systems import BenchConfig
    from baton.bench.workload import LengthDist, WorkloadSpec, generate

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    lm = tiny_lm("llama")
    spec = WorkloadSpec(
        requests=24,
        rate=math.inf,
        prompt=LengthDist.parse("uniform:64:0.5:8:120"),
        output=LengthDist.parse("uniform:48:0.5:8:90"),
        seed=1,
    )
    trace = generate(spec, lm.tokenizer, lm.limits.vocab_size, lm.limits.eos_token_ids)
    base = BenchConfig(model=str(model_dir("llama")), max_batch_size=8, max_seq_len=256, dtype="float32")
    row = timeline.run_one("baton:1+1/lof", base, lm, trace, interval=0.05)
    assert row["failed"] == 0 and row["tok_s"] > 0
    assert row["cpu_s"]["decode"] > 0 and row["cpu_s"]["prefill"] > 0, row["cpu_s"]
    assert max(r for r in row["series"]["rows"] if not math.isnan(r)) >= 2, row["series"]["rows"]
    with pytest.raises(ValueError, match="baton:P\\+D"):
        timeline.run_one("orca", base, lm, trace, interval=0.05)
