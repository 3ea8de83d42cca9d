"""The chaos run's judge pairs each submission with Slurm's record of it by the job's own name: a
slurmctld back from older state gives a forgotten job's id to the next submission, and an sbatch it
did not answer may still have made a job. (No cluster here: Slurm's records are given as squeue
--json and sacct would give them.)"""
from __future__ import annotations

from slurm_vgpu_dev.chaos import DONE, Chaos, Report, Submission


def _run(tmp_path, submissions):
    chaos = object.__new__(Chaos)  # the judge alone: no cluster, no database
    chaos.report = Report()
    chaos.submitted = []
    for index, (job_id, share, printed) in enumerate(submissions):
        out = tmp_path / f"{index}.out"
        if printed is not None:
            out.write_text(printed)
        chaos.submitted.append(Submission(job_id, f"chaos-{index}", f"--gres=vgpu:{share}", share, out))
    return chaos


def _job(job_id, state="COMPLETED", comment="vgpu-state=pinned share=50"):
    return {"job_id": job_id, "job_state": [state], "admin_comment": comment, "nodes": "node1"}


def _ran(share):
    return f"share={share} gpu=0\n{DONE}\n"


def test_a_reused_id_is_two_jobs_each_judged_by_its_own_record(tmp_path):
    # chaos-0 got id 151 and ran whole; slurmctld forgot it and gave 151 to chaos-1, which asked 25
    chaos = _run(tmp_path, [(151, 50, _ran(50)), (151, 25, _ran(25))])
    chaos.count({"chaos-1": _job(151)}, held=set())
    assert chaos.report.completed_with_slice == 1
    assert chaos.report.rolled_back == [151]
    assert chaos.report.ran_without_slice == []


def test_a_job_whose_output_names_another_share_ran_without_its_slice(tmp_path):
    chaos = _run(tmp_path, [(7, 50, _ran(100))])
    chaos.count({"chaos-0": _job(7)}, held=set())
    assert chaos.report.ran_without_slice == [7]
    assert "chaos-0 asked --gres=vgpu:50" in chaos.report.ran_without_slice_why[0]


def test_a_refused_sbatch_whose_job_was_made_is_judged_and_one_never_made_is_not_counted(tmp_path):
    chaos = _run(tmp_path, [(0, 30, _ran(30)), (0, 40, None), (9, 40, _ran(40))])
    chaos.count({"chaos-0": _job(8), "chaos-2": _job(9)}, held=set())
    assert chaos.report.jobs == 2 and chaos.report.made_though_refused == 1
    assert chaos.report.completed_with_slice == 2


def test_a_forgotten_job_is_lost_only_while_a_slice_is_still_held_for_it(tmp_path):
    chaos = _run(tmp_path, [(3, 20, None), (4, 20, None)])
    chaos.count({}, held={4})
    assert chaos.report.lost_by_slurmctld == [3]
    assert chaos.report.lost == [4]


def test_a_failed_job_needs_a_reason_a_user_can_read(tmp_path):
    chaos = _run(tmp_path, [(5, 20, ""), (6, 20, "")])
    chaos.count({"chaos-0": _job(5, "FAILED", 'vgpu-state=failed wait="no GPU fits"'),
                 "chaos-1": _job(6, "FAILED")}, held=set())
    assert chaos.report.ended_with_reason == 1
    assert chaos.report.unfinished == [6] and not chaos.report.held
