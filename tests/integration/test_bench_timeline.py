"""bench/timeline.py against a real `pacs serve` and dcmtk's storescu, on a few small images: its
probes must still find the functions they wrap, and every instance must show every phase, the
phases adding up to the time per instance (a renamed function would leave a phase without marks)."""

from __future__ import annotations

import math
from pathlib import Path

from bench import timeline
from bench.ingest import _generate


def test_every_phase_of_every_instance_is_timed_and_they_add_up(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    count = timeline.SKIP + 12
    _generate(corpus, 512, count)  # 0.5 MB each: four data set PDUs from storescu
    files = sorted(corpus.glob("*.dcm"))

    seconds = timeline.run(files, tmp_path / "run", probed=True)

    means, medians, counted = timeline.analyse(tmp_path / "run" / "marks.txt")
    assert seconds > 0
    # One cycle per response after the first, the first SKIP left out; none may miss a mark.
    assert counted == count - 1 - timeline.SKIP
    phases = [label for label, _ in timeline.PHASES]
    assert all(means[label] >= 0 and medians[label] >= 0 for label in phases)
    assert math.isclose(sum(means[label] for label in phases), means["total"], rel_tol=1e-9)
    part, _, _ = timeline.PARTS[phases[1]]  # creating the object, inside the command's phase
    assert 0 < means[part] <= means[phases[1]]
    for label in (
        "parse and checks",
        "index transaction",
        "command PDU: pynetdicom decodes the C-STORE-RQ, the object is created",
    ):
        assert means[label] > 0, label

    section = timeline.render(means, medians, counted, seconds, seconds, count)
    assert all(f"| {label} |" in section for label in phases)
