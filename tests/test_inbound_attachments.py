"""Attachment files on disk: content-addressed, atomic, idempotent, private; and a 25 MB attachment
parsed and stored with little memory beyond the message itself."""

from __future__ import annotations

import base64
import hashlib
import asyncio
import os
import stat
import tracemalloc

import pytest

from gateway.inbound.attachments import STALE_TEMP, AttachmentFiles, Syncs
from gateway.inbound.mime import parse


@pytest.fixture
def files(tmp_path):
    old = os.umask(0o022)  # a usual umask: the files must still end up private
    try:
        yield AttachmentFiles(tmp_path / "attachments")
    finally:
        os.umask(old)


def test_put_names_the_file_by_its_sha256_under_two_fan_out_levels(files):
    data = b"%PDF-1.4 an invoice"
    sha = files.put(data)
    assert sha == hashlib.sha256(data).hexdigest()
    path = files.root / sha[:2] / sha[2:4] / sha
    assert path.read_bytes() == data
    assert files.exists(sha) and files.read(sha) == data and files.size(sha) == len(data)
    with files.open(sha) as f:
        assert f.read() == data


def test_files_are_0600_and_directories_0700(files):
    sha = files.put(b"private mail")
    path = files.path(sha)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in (files.root, path.parent, path.parent.parent, files.root / "tmp"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d


def test_put_is_idempotent_and_chunks_name_the_same_file(files):
    data = os.urandom(300_000)
    sha = files.put(data)
    first = files.path(sha).stat()
    assert files.put(data) == sha
    assert files.put(iter([data[:1000], data[1000:], b""])) == sha
    again = files.path(sha).stat()
    assert again.st_ino == first.st_ino  # not rewritten (its mtime is refreshed: see the sweep test)
    assert list((files.root / "tmp").iterdir()) == []


def test_a_batch_writes_every_file_and_they_are_there_after_the_block(files):
    blobs = [os.urandom(5000) for _ in range(20)]
    with files.batch() as batch:
        names = [batch.put(b) for b in blobs] + [batch.put(iter([blobs[0]]))]
    assert names[-1] == names[0]
    assert [files.read(n) for n in names[:-1]] == blobs
    assert all(stat.S_IMODE(files.path(n).stat().st_mode) == 0o600 for n in names)


async def test_the_fsyncs_of_concurrent_messages_go_in_shared_rounds(files):
    # Each message's files are written (not yet synced) and handed to Syncs; the messages waiting
    # while one round syncs go together in the next, as the store group-commits.
    syncs = Syncs()
    batches = []
    for _ in range(20):
        batch = files.batch()
        batch.put(os.urandom(3000))
        batches.append(batch.take())
    assert all(batches) and not files.batch().take()
    await asyncio.gather(*(syncs.sync(paths) for paths in batches))
    assert 1 <= syncs.rounds <= 2
    await syncs.sync(set())   # nothing to sync: no round
    assert syncs.rounds <= 2
    rounds = syncs.rounds
    syncs.close()   # the processor stopped: the threads go; started again it syncs as before
    await syncs.sync(batches[0])
    assert syncs.rounds == rounds + 1
    syncs.close()


async def test_a_failed_fsync_round_fails_every_message_in_it(files, tmp_path):
    syncs = Syncs()
    batch = files.batch()
    batch.put(b"kept")
    results = await asyncio.gather(syncs.sync(batch.take() | {str(tmp_path / "gone")}), syncs.sync({str(tmp_path / "gone2")}),
                                   return_exceptions=True)
    assert all(isinstance(r, FileNotFoundError) for r in results)


def test_a_file_cut_short_by_a_crash_is_replaced_by_the_next_put(files):
    data = b"the whole attachment"
    sha = hashlib.sha256(data).hexdigest()
    path = files.path(sha)
    files.put(b"seed the directories")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:5])  # what a crash before the fsync can leave
    assert files.put(data) == sha
    assert files.read(sha) == data
    path.write_bytes(b"")
    assert files.put(iter([data])) == sha
    assert files.read(sha) == data


def test_a_put_that_fails_midway_leaves_nothing(files):
    def chunks():
        yield b"first half"
        raise OSError("source went away")

    with pytest.raises(OSError, match="source went away"):
        files.put(chunks())
    assert list((files.root / "tmp").iterdir()) == []
    assert not files.exists(hashlib.sha256(b"first half").hexdigest())


@pytest.mark.parametrize("name", ["../../etc/passwd", "ab/cd", "A" * 64, "0" * 63, "", "0" * 64 + "\n"])
def test_names_that_are_not_a_sha256_are_refused(files, name):
    with pytest.raises(ValueError):
        files.path(name)


def test_remove(files):
    sha = files.put(b"to be swept")
    assert files.remove(sha) is True
    assert not files.exists(sha)
    assert files.remove(sha) is False


def test_a_sweep_leaves_a_file_that_a_put_reused_after_it_began(files):
    data = b"the same logo in every reply"
    sha = files.put(data)
    old = files.path(sha).stat().st_mtime - 100
    os.utime(files.path(sha), (old, old))
    sweep_began = old + 50  # the sweeper counted no reference to it at this time...
    assert files.put(data) == sha  # ...then a message being processed put the same bytes
    assert files.remove(sha, unused_since=sweep_began) is False
    assert files.exists(sha)
    assert files.remove(sha, unused_since=files.path(sha).stat().st_mtime + 1) is True


def test_stale_temporaries_are_removed_and_fresh_ones_kept(files):
    files.put(b"makes the tmp dir")
    stale, fresh = files.root / "tmp" / "put-stale", files.root / "tmp" / "put-fresh"
    stale.write_bytes(b"left by a crash")
    fresh.write_bytes(b"a put in progress")
    old = stale.stat().st_mtime - STALE_TEMP - 10
    os.utime(stale, (old, old))
    assert files.remove_stale_temporaries() == 1
    assert not stale.exists() and fresh.exists()


def test_a_25_mb_attachment_is_parsed_and_stored_chunk_by_chunk(files):
    data = os.urandom(25 * 2**20)
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = (b"From: big@example.com\r\nSubject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n"
           b"\r\n--B\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--B\r\nContent-Type: application/zip; name=big.zip\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + encoded + b"\r\n--B--\r\n")
    del encoded
    tracemalloc.start()
    try:
        parsed = parse(raw)
        [part] = parsed.attachments
        sha = files.put(part.chunks())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (part.filename, part.size, parsed.text) == ("big.zip", len(data), "see attached")
    assert sha == hashlib.sha256(data).hexdigest()
    assert files.size(sha) == len(data)
    # Beyond the message itself (allocated before tracing began) the parse and the store held a few
    # chunks at a time, not the 25 MB decoded nor the 34 MB encoded.
    assert peak < 8 * 2**20, peak


def test_directories_removed_behind_the_writers_back_are_made_again(files):
    # The writer remembers the directories it has seen (no stat per put); removed by hand, they
    # are made again instead of the put failing.
    import shutil

    first = files.put(b"one")
    again = b"two" * 10
    shutil.rmtree(files.root)
    sha = files.put(again)
    assert files.read(sha) == again and not files.exists(first)
    shutil.rmtree(files.root / sha[:2])   # the fan-out only: tmp is still there
    assert files.put(iter([again])) == sha and files.read(sha) == again
