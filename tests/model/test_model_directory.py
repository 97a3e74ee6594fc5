"""labels.txt, read from a directory whoever can write the model directory controls: a regular
file of at most MAX_LABELS_BYTES (1 MiB), UTF-8, one class name a line, else one clear
ModelDirectoryError naming the file and the rule."""
import pytest

from connector.errors import ModelDirectoryError
from connector.model.directory import MAX_LABELS_BYTES, open_model_directory, read_metadata


@pytest.fixture
def model_dir(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"not parsed here")
    return tmp_path


def test_labels_are_one_a_line_blank_lines_skipped_any_line_ending(model_dir):
    (model_dir / "labels.txt").write_bytes(b"person\r\n\r\n  bicycle \rcar\n\nbus")
    assert open_model_directory(str(model_dir)).labels == ("person", "bicycle", "car", "bus")


def test_labels_at_the_cap_are_read_one_byte_more_is_refused_with_the_rule(model_dir):
    line = b"x" * 1023 + b"\n"
    (model_dir / "labels.txt").write_bytes(line * (MAX_LABELS_BYTES // len(line)))
    assert len(read_metadata(str(model_dir)).labels) == MAX_LABELS_BYTES // len(line)
    (model_dir / "labels.txt").write_bytes(line * (MAX_LABELS_BYTES // len(line)) + b"y")
    with pytest.raises(ModelDirectoryError, match=r"labels\.txt' is larger than 1048576 bytes; "
                                                  r"labels\.txt holds one class name a line, at most "
                                                  r"1048576 bytes"):
        open_model_directory(str(model_dir))


def test_labels_that_are_not_utf8_are_a_model_directory_error(model_dir):
    (model_dir / "labels.txt").write_bytes(b"person\n\xff\xfe\n")
    with pytest.raises(ModelDirectoryError, match=r"labels\.txt' is not UTF-8 text \(byte 0xff at offset 7\)"):
        open_model_directory(str(model_dir))


def test_labels_reached_through_a_link_are_read(model_dir, tmp_path_factory):
    elsewhere = tmp_path_factory.mktemp("mounted") / "labels.txt"
    elsewhere.write_text("cat\ndog\n")
    (model_dir / "labels.txt").symlink_to(elsewhere)
    assert open_model_directory(str(model_dir)).labels == ("cat", "dog")
