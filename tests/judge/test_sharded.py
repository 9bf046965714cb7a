"""A judge too big for one GPU, sharded over the processes with FSDP2: checked on the CPU with 2 gloo processes
(tests/judge/fsdp_judge.py) against a whole copy of the same judge."""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_a_sharded_judge_rolls_out_and_scores_as_the_whole_one(tiny_vlm_dir, tmp_path):
    out = tmp_path / "report.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(HERE / "fsdp_judge.py"), str(tiny_vlm_dir), str(out)],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = json.loads(out.read_text())
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["completion_length"] for r in reports] == [3, 7]  # ranks decoded different lengths, in step
    for r in reports:
        assert r["sharded"] == "DTensor" and r["same_completions"]
        assert r["logps"] < 1e-5 and r["attention"] < 1e-6 and r["grad"] < 1e-6 and r["grad_norm"] > 0
