"""Label discovery from class subfolders and from a CSV, and the label map's round trip through a checkpoint."""

import pytest
import torch

from src.labels import LabelError, class_names, csv_labels, folder_labels


def _tree(root, spec):
    files = []
    for rel in spec:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        files.append(p)
    return files


def test_folder_labels_first_level_subfolder_in_natural_order(tmp_path):
    files = _tree(tmp_path, ["10/a.png", "2/b.png", "2/deeper/c.png", "cat/d.png", "10/e.png"])
    classes, labels = folder_labels(tmp_path, files)
    assert classes == ["2", "10", "cat"]
    assert labels == [1, 0, 0, 2, 1]


def test_folder_labels_refuse_loose_files(tmp_path):
    files = _tree(tmp_path, ["3/a.png", "loose.png"])
    with pytest.raises(LabelError, match="class subfolder"):
        folder_labels(tmp_path, files)


def test_csv_labels_and_their_errors(tmp_path):
    files = _tree(tmp_path, ["x/a.wav", "b.wav"])
    table = tmp_path / "labels.csv"
    table.write_text("file,label,other\nx/a.wav,dog,1\nb.wav,cat,2\n")
    assert csv_labels(table, files, tmp_path) == (["cat", "dog"], [1, 0])
    assert csv_labels(table, files, tmp_path, column="other") == (["1", "2"], [0, 1])
    with pytest.raises(LabelError, match="no column 'species'"):
        csv_labels(table, files, tmp_path, column="species")
    table.write_text("file,label\nx/a.wav,dog\n")
    with pytest.raises(LabelError, match="no label for b.wav"):
        csv_labels(table, files, tmp_path)
    with pytest.raises(LabelError, match="does not exist"):
        csv_labels(tmp_path / "missing.csv", files, tmp_path)


def test_class_names_deduplicate():
    assert class_names(["b", "a", "b", "a10", "a9"]) == ["a", "a9", "a10", "b"]


def test_label_map_round_trips_through_a_checkpoint(tmp_path):
    from src.latent.stage import module_from_checkpoint
    from src.module import DiffusionModule

    classes, _ = folder_labels(tmp_path, _tree(tmp_path, ["zero/a.png", "one/b.png", "two/c.png"]))
    m = DiffusionModule(backbone={"name": "unet", "spatial_dims": 2, "in_channels": 1, "preset": "tiny"},
                        diffusion={"family": "flow"}, data_shape=[1, 8, 8],
                        cond={"num_classes": len(classes), "classes": classes})
    path = tmp_path / "m.ckpt"
    torch.save({"hyper_parameters": dict(m.hparams), "state_dict": m.state_dict()}, path)
    back, _ = module_from_checkpoint(path)
    assert back.cond_cfg["classes"] == ["one", "two", "zero"] and back.num_classes == 3
