"""Trainer callbacks: the stage progress bar."""

from __future__ import annotations


def test_the_progress_bar_fits_80_columns(monkeypatch):
    """At 100 columns Lightning's bar with our metrics wrapped into three lines: one short entry, no it/s, a short bar."""
    from pytorch_lightning.callbacks import RichProgressBar

    from conftest import compiled
    from curriculum.run.callbacks import StageProgressBar

    bar = StageProgressBar(compiled())
    monkeypatch.setattr(RichProgressBar, "get_metrics", lambda self, t, m: {"train/loss_image_text": 4.4812, "train/loss_text_only": 4.95,
                                                                           "tok/s": 10398.2, "v_num": 0})
    assert bar.get_metrics(None, None) == {"loss": "4.48/4.95, 10398 tok/s"}
    columns = bar.configure_columns(None)
    assert "ProcessingSpeedColumn" not in [type(c).__name__ for c in columns]
    assert [c.bar_width for c in columns if hasattr(c, "bar_width")] == [12]
