"""OutputFile: what goes in is what the file holds, whatever the block boundaries, and faults surface."""

from __future__ import annotations

import errno
import fcntl
import os

import pytest
from hypothesis import given, settings

from roundtrip import output_file
from roundtrip.output_file import OutputFile, ReadBackError
from roundtrip.testing import byte_chunks

SMALL_BLOCK = 3 * output_file.ALIGNMENT  # many block boundaries in little data


@settings(max_examples=40, deadline=None)
@given(chunks=byte_chunks, read_back=..., small_blocks=...)
def test_file_holds_exactly_the_bytes_written(tmp_path_factory, chunks: list[bytes], read_back: bool,
                                              small_blocks: bool):
    path = tmp_path_factory.mktemp("out") / "file"
    with OutputFile(path, read_back, SMALL_BLOCK if small_blocks else output_file.BLOCK_BYTES) as output:
        for chunk in chunks:
            output.write(chunk)
        assert output.tell() == sum(map(len, chunks))
    assert path.read_bytes() == b"".join(chunks)


def test_transfers_the_filesystem_refuses_under_o_direct_go_through_the_page_cache(tmp_path, monkeypatch):
    real_pwrite, refused = os.pwrite, []

    def pwrite(fd, data, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    data = os.urandom(5 * SMALL_BLOCK + 123)
    with OutputFile(tmp_path / "file", read_back=True, block_bytes=SMALL_BLOCK) as output:
        output.write(data)
    assert refused and not output.direct
    assert (tmp_path / "file").read_bytes() == data


def test_a_block_that_reads_back_differently_is_an_error(tmp_path, monkeypatch):
    real_read = output_file._pread_into

    def corrupting_read(fd, view, offset):
        count = real_read(fd, view, offset)
        if offset >= SMALL_BLOCK:  # the second block
            view[7] ^= 0xFF
        return count

    monkeypatch.setattr(output_file, "_pread_into", corrupting_read)
    with pytest.raises(ReadBackError, match=f"bytes {SMALL_BLOCK}-"):
        with OutputFile(tmp_path / "file", read_back=True, block_bytes=SMALL_BLOCK) as output:
            output.write(bytes(4 * SMALL_BLOCK))
