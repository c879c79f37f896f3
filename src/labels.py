"""Moved to ``datamodules/labels.py`` (the shared data layer); this name keeps old imports working."""

from datamodules.labels import LabelError, class_names, csv_labels, folder_labels

__all__ = ["LabelError", "class_names", "csv_labels", "folder_labels"]
