"""`optbench bench` runs end to end on a tiny setting and prints its table (figures are never asserted)."""

from optbench import bench


def test_bench_prints_the_table_and_the_sweep_ratio(mnist_root, capsys):
    assert bench.main([f"data.root={mnist_root}", "device=cpu", "data.train_eval_size=500", "data.val_size=1000",
                       "model.hidden=[32]",
                       "--epochs", "1", "--rounds", "1",
                       "--sweep", "2", "--max-steps", "2", "--pass-size", "2"]) == 0
    out = capsys.readouterr().out
    for row in ("DataLoader loop (workers=0)", "torchvision-style loop (PIL, workers=0)", "GEMM floor",
                "| approach", "s/epoch", "vs DataLoader", "vs PIL loop", "of floor", "peak memory"):
        assert row in out
    assert "| optbench" in out
    # torch's CPU autocast always takes bf16, so device=cpu gets the amp row and the bf16 floor
    assert "| optbench diagnostics=basic trainer.amp=true" in out and "| GEMM floor (bf16)" in out
    assert "of the bf16 GEMM floor" in out
    assert "| optbench diagnostics=basic trainer.tensorboard=true" in out and "live TensorBoard costs" in out
    assert "`optbench --help`:" in out and "first step done" in out
    assert "sweep of 2 runs" in out and "x faster" in out
    assert "per model in a 2-seed pass" in out and "x the launches" in out
    assert "GEMM floor of these 2 runs:" in out and "no schedule of the same fp32 GEMMs" in out
