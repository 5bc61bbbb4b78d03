"""One writer per index folder: a second writer (service, CLI or rebuild) is refused with a message naming the
folder and the holder, while replicas still open; the lock dies with its holder, kill -9 included."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from index_testing import make_embedded

from retrieval.errors import UserError
from retrieval.index import IndexDir, build_index
from retrieval.store import NewItem

HOLDER = """
import sys, time
from retrieval.index import IndexDir
held = IndexDir(sys.argv[1])
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def built(tmp_path):
    embedded = make_embedded(tmp_path, 300, 20, dim=16)
    folder = tmp_path / "idx"
    build_index(folder, embedded, kind="flat")
    return folder, embedded


def test_a_second_writer_is_refused_and_the_first_keeps_working(built):
    folder, embedded = built
    first = IndexDir(folder)
    with pytest.raises(UserError, match=rf"{folder}.*already open for writing \(process \d+\)"):
        IndexDir(folder)
    with pytest.raises(UserError, match="already open for writing"):
        build_index(folder, embedded, kind="flat", force=True)
    replica = IndexDir(folder, mmap=True)  # replicas never write: they need no lock
    [added] = first.add([NewItem("text", embedded.text_vectors[0], "after the refusals")])
    assert added in [hit.item.id for hit in first.search("text", embedded.text_vectors[:1], 2)[0]]
    replica.close()
    first.close()
    second = IndexDir(folder)  # closed: the next writer opens, and sees what the first added
    assert second.get(added).caption == "after the refusals"
    second.close()


def test_a_writer_killed_with_sigkill_leaves_no_lock_behind(built):
    folder, _ = built
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(UserError, match=rf"process {holder.pid}\)"):
            IndexDir(folder)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    IndexDir(folder).close()
