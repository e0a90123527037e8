from neko.train.loop import _Horizon, _lr_lambda


def test_fixed_horizon_is_the_configured_cosine_schedule():
    h = _Horizon(100, 0.1)
    f = _lr_lambda(h, "cosine", 0.0)
    assert [round(f(s), 3) for s in (0, 9)] == [0.1, 1.0]
    assert f(10) == 1.0 and abs(f(100)) < 1e-12 and 0.4 < f(55) < 0.6


def test_time_budget_shrinks_the_horizon_so_warmup_and_decay_happen_within_the_budget():
    h = _Horizon(1000, 0.1)  # 1000 steps planned, but only ~100 fit the budget
    h.update(steps_done=10, loop_elapsed=10.0, loop_budget=100.0)
    assert (h.total, h.warmup) == (100, 10)
    f = _lr_lambda(h, "cosine", 0.0)
    assert f(9) == 1.0  # peak reached at the end of warm-up, not at step 100
    assert f(99) < 0.01  # decayed by the time the budget runs out
    h.update(
        steps_done=50, loop_elapsed=100.0, loop_budget=100.0
    )  # slower than estimated: never below done+1
    assert h.total == 51
    h.update(steps_done=10, loop_elapsed=0.001, loop_budget=100.0)  # never beyond the configured total
    assert h.total == 1000


def test_progress_bar_follows_the_time_fitted_horizon(tmp_path):
    from neko.train.monitor import Monitor

    m = Monitor(tmp_path, enabled=True, total_steps=745, start_step=0, progress=True)
    try:
        m.set_total(40)  # the budget fits 40 of the epoch's 745 steps: the bar must say 40
        assert m.bar.total == 40
    finally:
        m.close()
