"""connector.files.read_regular, the one reader of files someone else may have touched: a regular
file only (a FIFO is refused without blocking), within a cap, and a symbolic link refused unless
the caller reads a path the operator named (follow_links: a Kubernetes ConfigMap key is a link)."""
import os

import pytest

from connector.files import UnsafeFile, read_regular


def test_a_link_is_refused_unless_the_caller_follows_links(tmp_path):
    real = tmp_path / "real.yaml"
    real.write_bytes(b"a: 1\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(real.name)
    with pytest.raises(UnsafeFile, match="is a symbolic link; a spool record must not be one"):
        read_regular(str(link), 100, "spool record")
    assert read_regular(str(link), 100, "parameter file", follow_links=True) == b"a: 1\n"


@pytest.mark.parametrize("follow_links", [False, True])
def test_a_fifo_a_directory_and_an_oversize_file_are_refused_in_both_modes(tmp_path, follow_links):
    fifo = tmp_path / "x.fifo"
    os.mkfifo(str(fifo))  # O_NONBLOCK: opening it returns at once; fstat then refuses it
    big = tmp_path / "big"
    big.write_bytes(b"x" * 101)
    for path, problem in ((fifo, "not a regular file (a FIFO)"),
                          (tmp_path, "not a regular file (a directory)"),
                          (big, "larger than 100 bytes")):
        with pytest.raises(UnsafeFile) as caught:
            read_regular(str(path), 100, "thing", follow_links=follow_links)
        assert caught.value.problem == problem
        assert str(caught.value) == "{} is {}; not a thing".format(path, problem)
    assert read_regular(str(big), 101, follow_links=follow_links) == b"x" * 101
