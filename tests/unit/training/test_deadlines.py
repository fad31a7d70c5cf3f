from p2pagent.training.config import TrainingConfig
from p2pagent.training.deadlines import DeadlineEstimator, phase_timeout

CONFIG = TrainingConfig(
    initial_phase_timeout=10.0, min_phase_timeout=0.1, max_phase_timeout=30.0
).validate()


def test_without_samples_the_initial_timeout_is_used() -> None:
    assert phase_timeout([], CONFIG) == 10.0


def test_the_timeout_follows_measured_arrivals_both_ways() -> None:
    est = DeadlineEstimator(CONFIG)
    for _ in range(64):
        est.record(0.2)
    fast = est.timeout()
    assert 0.1 <= fast < 1.0
    for _ in range(64):
        est.record(2.0)
    slow = est.timeout()
    assert slow > 3.0
    for _ in range(64):
        est.record(0.2)
    assert est.timeout() == fast


def test_one_slow_member_of_four_does_not_stretch_the_deadline_to_its_pace() -> None:
    samples = [0.2, 0.21, 0.19, 0.6] * 16  # the fourth member is 3x slower
    assert phase_timeout(samples, CONFIG) < 0.6


def test_the_timeout_is_clamped() -> None:
    assert phase_timeout([0.0] * 10, CONFIG) == 0.1
    assert phase_timeout([100.0] * 10, CONFIG) == 30.0
