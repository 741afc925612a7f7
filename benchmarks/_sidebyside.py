"""Side by side in one run: each contender once per round, the order alternating between rounds, so that
a machine getting busier or quieter weighs on both alike."""

from typing import Callable, Dict, List, Optional, Sequence


def alternate(rounds: int, modes: Sequence[str], measure: Callable[[str], float],
              after: Optional[Callable[[], None]] = None) -> Dict[str, List[float]]:
    """{mode: [seconds per round]}: ``measure(mode)`` once per mode per round; ``after()`` after each."""
    times: Dict[str, List[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in (modes if r % 2 == 0 else tuple(reversed(modes))):
            times[mode].append(measure(mode))
            if after is not None:
                after()
    return times
