"""empty-claim (deterministic): a sweep killed between creating a claim file (O_EXCL) and writing it
leaves an empty claim; a resume that meets it must still run that job."""
from __future__ import annotations

from ._harness import Chaos, analyse, finish, new_result, ran_in_final
from ._procs import Run

ROWS = {"empty-claim": "claim file left empty (kill between O_EXCL create and write), resumed"}


def run(chaos: Chaos) -> dict:
    from bench.claims import Claims  # noqa: F401 - documents where the rule lives

    res = new_result()
    d = chaos.trial_dir("empty-claim", 0)
    out = d / "out"
    records = chaos.records(out)
    claims = records.parent / f"{records.stem}.claims"
    claims.mkdir(parents=True)
    (claims / sorted(chaos.keys)[0]).write_bytes(b"")
    res["kills"] += 1
    resume = Run(chaos.args(out), d / "resume1.log")
    finish(resume, res, "resume over an empty claim")
    a = analyse(records, chaos.keys)
    res["details"].append({"lost_after_resume": a["lost"], "resume": ran_in_final(resume.log)})
    if a["lost"]:
        res["unexpected"].append(f"resume exited 0 with {a['lost']} job(s) not done, left to an empty claim "
                                 f"file ({ran_in_final(resume.log)})")
    res["final"].append(a)
    res["trials"] += 1
    print(f"  empty-claim: {a} {ran_in_final(resume.log)}", flush=True)
    return {"empty-claim": res}
