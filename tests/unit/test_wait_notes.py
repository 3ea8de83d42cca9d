"""When the placement writes a waiting job's reason again: every write is an update RPC to
slurmctld, and under a burst the figures in every waiting job's reason move nearly every cycle."""
from slurm_vgpu.placement.wait_notes import WaitNotes, gist

FULL = "needs 30% of one GPU; the most free on any eligible GPU is 20%"
FULLER = "needs 30% of one GPU; the most free on any eligible GPU is 10%"
DRAINED = "every GPU is on a drained or down node"


def test_a_first_reason_and_a_reason_in_new_words_are_written_at_once():
    notes = WaitNotes(every=60)
    assert notes.due(7, None, FULL, now_s=0)
    notes.written(7, 0)
    assert notes.due(7, FULL, DRAINED, now_s=1)


def test_the_same_reason_is_never_written_again():
    notes = WaitNotes(every=60)
    notes.written(7, 0)
    assert not notes.due(7, FULL, FULL, now_s=1000)


def test_a_reason_whose_figures_alone_moved_waits_for_the_interval():
    notes = WaitNotes(every=60)
    notes.written(7, 0)
    assert gist(FULL) == gist(FULLER)
    assert not notes.due(7, FULL, FULLER, now_s=59)
    assert notes.due(7, FULL, FULLER, now_s=60)


def test_a_job_written_by_an_earlier_daemon_gets_its_new_figures_at_once():
    """Nothing remembered (a restarted daemon): the reason shown may be any age."""
    assert WaitNotes(every=60).due(7, FULL, FULLER, now_s=0)


def test_jobs_that_no_longer_wait_are_forgotten():
    notes = WaitNotes(every=60)
    notes.written(7, 0)
    notes.written(8, 0)
    notes.keep_only([8])
    assert notes.due(7, FULL, FULLER, now_s=1) and not notes.due(8, FULL, FULLER, now_s=1)
