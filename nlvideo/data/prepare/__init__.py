"""``python -m nlvideo.data.prepare {kinetics,charades} SRC DST``: downloaded datasets re-encoded for fast
random access (short side 256/320, a key frame every ``--gop`` frames, no audio), with the lists that
``data=kinetics400`` / ``data=charades`` read.

Why: decord and PyAV both decode from the key frame before a clip, and downloaded Kinetics files have
a key frame every ~250 frames, so a 32x2 clip decodes up to 300 frames of up to 4K to keep 32.
Re-encoded with ``--gop 16`` at short side 256 it decodes at most 78 small ones.

* :mod:`~nlvideo.data.prepare.layouts`: where the videos and labels of each download layout are, and
  the lists written for nlvideo.
* :mod:`~nlvideo.data.prepare.encode`: one video re-encoded with PyAV (written to a temporary name,
  renamed when complete), and the streaming H.264 writer the built-in dataset uses too.
* :mod:`~nlvideo.data.prepare.__main__`: the command (parallel, resumable, report and summary).

docs/data.md#preparing-kineticscharades has the commands.
"""
