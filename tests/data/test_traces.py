import threading

import pytest

from data.traces import Trace, TraceFormatError, TraceRecord, TraceStore, parse_tagged_text

# The paper's Appendix A.1 example answer (Table 4), verbatim in form.
PAPER_ANSWER = (
    "<Reasoning> <Observation>: I see a toy kitchen with a stove, sink, pot, green plate, yellow stuffed duck, white egg, "
    "and a robotic gripper arm. <Situation Analysis>: The scene shows a toy kitchen with various items on the stovetop. "
    "<Spatial Reasoning>: All target objects and destinations are on the stove and within reach of the robotic arm. "
    "<Task Planning>: The robot needs to pick up the egg and place it on the plate: <logical_steps><1> Pick up egg "
    "<2> Place egg on plate <3> Pick up stuffed duck <4> Place stuffed duck in pot <sub_action> The robot first attempts "
    "to put the egg on the plate."
)


def test_parses_the_papers_format():
    t = parse_tagged_text(PAPER_ANSWER)
    assert t.observation.startswith("I see a toy kitchen")
    assert t.logical_steps == ["Pick up egg", "Place egg on plate", "Pick up stuffed duck", "Place stuffed duck in pot"]
    assert t.sub_action == "The robot first attempts to put the egg on the plate."
    assert t.task_planning == "The robot needs to pick up the egg and place it on the plate"


def test_round_trip_and_tolerated_variants():
    t = Trace("obs", "sit", "spa", "plan", ["a", "b"], "go")
    assert parse_tagged_text(t.to_text()) == t
    markdown = ("#1 **<Observation>**: obs\n#2 **<Situation Analysis>**: sit\n#3 **<Spatial Reasoning>**: spa\n"
                "#4 **<Task Planning>**: plan\n<logical_steps>\n1. a\n2. b\n<sub_action> go</sub_action>")
    assert parse_tagged_text(markdown) == t


@pytest.mark.parametrize("broken, reason", [
    ("", "empty answer"),
    ("<Observation>: a <Situation Analysis>: b <Task Planning>: c <logical_steps><1> x <sub_action> y", "Spatial Reasoning"),
    ("<Observation>: a <Situation Analysis>: b <Spatial Reasoning>: c <Task Planning>: d <logical_steps><1> x", "sub_action"),
    ("<Observation>:  <Situation Analysis>: b <Spatial Reasoning>: c <Task Planning>: d <logical_steps><1> x <sub_action> y", "empty section"),
])
def test_incomplete_answers_are_errors_with_reasons(broken, reason):
    with pytest.raises(TraceFormatError, match=reason):
        parse_tagged_text(broken)


def test_store_keeps_lists_indexed_by_step(tmp_path):
    store = TraceStore(tmp_path)
    records = store.load("ep", 3)
    assert records == [None, None, None]
    records[1] = TraceRecord(step=1, status="failed", teacher="t", model="m", prompt_version="p", error="bad").to_dict()
    store.save("ep", records)
    loaded = store.load("ep", 3)
    assert loaded[0] is None and loaded[1]["status"] == "failed" and loaded[1]["error"] == "bad"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind
    assert len(store.load("ep", 2)) == 2  # the episode got shorter: its old records come back to be found stale


def test_concurrent_saves_leave_a_valid_file(tmp_path):
    store = TraceStore(tmp_path)

    def writer(k):
        for i in range(20):
            store.save("ep", [{"step": 0, "writer": k, "i": i}])

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.load("ep", 1)[0]["i"] == 19
