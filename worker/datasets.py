"""The worker's data sets: one data root (``--data-root`` / ``BNN_TUNE_DATA_ROOT``) holding a
folder per data set, ``<root>/<dataset>`` (or ``<root>/<data_subdir>`` when the spec names
one). Whether a data set is there is a cheap file-existence check
(``bnn_core.data.dataset_problem``), made before a trial is claimed, so a worker without the
data leaves the study to workers that have it instead of failing its trials. Downloads happen
only with the worker's own ``--download``, into its own root.
"""

from __future__ import annotations

from typing import Any

from service.spec import StudySpec

__all__ = ["DataSets"]


class DataSets:
    """Availability checks and the last loaded data set (reused across trials: CIFAR-10 from
    disk costs seconds per trial otherwise)."""

    def __init__(self, root: str | None, download: bool) -> None:
        self.root = root
        self.download = download
        self._loaded: tuple[tuple[Any, ...], Any] | None = None

    def problem(self, spec: StudySpec) -> str | None:
        """Why this worker cannot load the spec's data set (None: it can). With ``download``
        a missing data set is fetched by the first trial instead."""
        if self.download:
            return None
        from bnn_core.data import dataset_problem

        return dataset_problem(spec.dataset, self.root, spec.data_subdir)

    def load(self, dataset: str, subdir: str | None) -> Any:
        """``bnn_core.data.load_dataset`` of the worker's root, cached for the next trial."""
        from bnn_core.data import load_dataset

        key = (dataset, subdir)
        if self._loaded is None or self._loaded[0] != key:
            self._loaded = None  # free the previous arrays before loading the next
            data = load_dataset(dataset, self.root, subdir=subdir, download=self.download)
            self._loaded = (key, data)
        return self._loaded[1]
