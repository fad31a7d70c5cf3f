from p2pagent.sim.training import TrainingScenario, simulate


def test_256_members_in_groups_of_16_with_5_percent_crashing_shrink_the_spread_100x() -> None:
    result = simulate(TrainingScenario(members=256, group_size=16, crash_per_round=0.05, seed=1))
    assert result.crashed >= 30
    assert len(result.rounds) == 3
    assert result.shrink >= 100, result.rounds


def test_a_fault_free_run_agrees_bit_for_bit_in_every_group_and_sends_the_bound() -> None:
    result = simulate(TrainingScenario(members=64, group_size=8, rounds=2, seed=3))
    for r in result.rounds:
        assert r.agreeing_groups == r.groups
        assert r.complete_members == r.live == 64
        assert r.worst_traffic_ratio <= 1.01
        assert r.refused == 0
    # An 8x8 grid: the second round mixes every row (members weigh by sample counts, so
    # it is close to, not exactly, the global average).
    assert result.rounds[-1].spread < result.initial_spread / 10


def test_the_same_seed_gives_the_same_run_and_another_seed_another() -> None:
    sc = TrainingScenario(members=40, group_size=8, crash_per_round=0.05, seed=7)
    a, b = simulate(sc), simulate(sc)
    assert a.digest == b.digest and a.rounds == b.rounds
    c = simulate(TrainingScenario(members=40, group_size=8, crash_per_round=0.05, seed=8))
    assert c.digest != a.digest


def test_stragglers_do_not_make_rounds_wait_past_the_adaptive_deadline() -> None:
    base = simulate(TrainingScenario(members=16, rounds=4, seed=2))
    slow = simulate(
        TrainingScenario(members=16, rounds=4, stragglers=2, straggler_factor=3.0, seed=2)
    )
    # After the first round the deadline is learned from arrivals: the rounds that include
    # 3x slower members last no longer than a few adapted phase timeouts.
    for r in slow.rounds[1:]:
        assert r.max_duration_s < 1.0
    assert slow.rounds[-1].spread < base.initial_spread / 100
