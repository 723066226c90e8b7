import gc

from shadowreplay.runtime import YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_start_up_objects_and_collects_young_ones_less_often() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 1000  # everything imported so far
        assert gc.isenabled()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
