"""config/quickstart.py end to end, shrunk (--preset_scale=tiny) on the tiny char dataset: the
shared early-exit model trains, the early-exit table and five figures are written, and the
last lines on screen say what to run next."""
import pytest

from conftest import run_train

import sample
import train_gpt2
from model import GPT

# README's first screen: config/quickstart.py in <= 3 min wall on a 2-core CPU (~1.3 projected
# from a quiet stretch), corpus build, evaluations, table and figures included. The training FLOPs are most of it: a
# change that raises them past this (more steps, width, layers, T) has to be re-measured there.
QUICKSTART_TRAIN_FLOPS = 2.5e12


def test_quickstart_budget():
    cfg, _ = train_gpt2.parse_config(["config/quickstart.py"])
    assert cfg["vocab_size"] is None            # the data's: 221 characters of the builtin corpus
    cfg["vocab_size"] = 221
    model = GPT(train_gpt2.model_config(cfg))
    flops = model.flops_per_token(cfg["T"]) * cfg["total_batch_size"] * cfg["max_steps"]
    assert flops <= QUICKSTART_TRAIN_FLOPS, f"{flops:.3g} training FLOPs: re-measure README's wall time"
    # the research on screen: shared weights, a head per layer, early exit, the table at the end
    assert model.config.share_weights and model.config.layer_heads and model.config.early_exit
    assert cfg["exit_table"] and cfg["checkpoint_interval"] == 0
    assert (cfg["max_steps"] - 1) // cfg["eval_interval"] + 2 <= 3     # evaluations: 0, mid, last


@pytest.mark.slow
def test_quickstart_tiny(char_data, tmp_path, capsys):
    log, img = tmp_path / "log", tmp_path / "img"
    r = run_train(["config/quickstart.py", "--preset_scale=tiny", f"--dataset={char_data}",
                   f"--log_dir={log}", f"--img_dir={img}", "--exit_table=0.0,0.5,1.01"])
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    text = (log / "quickstart.txt").read_text()
    assert "# vocab_size 40: the data's char vocabulary, exactly (vocab_size unset)" in text
    # the table: full depth, then one row per threshold; 0.0 exits everything at layer 1,
    # 1.01 never exits (full depth's CE exactly)
    i = out.index("#   threshold  val CE  vs full  avg exit depth  decode speedup")
    full, t0, t5, t101 = (ln.split() for ln in out[i + 1:i + 5])
    assert full[:2] == ["#", "off"] and t0[:2] == ["#", "0"] and t101[:2] == ["#", "1.01"]
    assert t0[4:6] == ["1.00", "/"] and t101[4:6] == ["3.00", "/"]
    assert t101[2] == full[2] and t101[3] == "+0.0%"
    assert out[i + 5].startswith("#   suggested: --exit_threshold ")
    assert out[i + 6] == (f"#   wrote {log}/quickstart/exit_eval.md and {img}/quickstart-pareto.png")
    assert (log / "quickstart" / "exit_eval.md").is_file()
    for name in ("", "-layers", "-exits", "-residuals", "-pareto"):
        assert (img / f"quickstart{name}.png").stat().st_size > 1000, name
    # the last lines: what to run next, and they run
    assert out[-4] == "# next:"
    assert out[-3].startswith(f"#   python sample.py --ckpt quickstart --log_dir {log} --exit_threshold ")
    assert out[-2].startswith(f"#   python eval_exit.py --ckpt {log}/quickstart/ckpt_000003.pt --data {char_data} ")
    assert out[-1].startswith(f"#   python train_gpt2.py config/4-test.py --preset_scale=cpu --dataset={char_data}")
    argv = out[-3].split("#")[1].split()[2:]
    assert sample.main(argv + ["--max_new_tokens", "5", "--num_samples", "1"]) == 0
    assert "[" in capsys.readouterr().out
