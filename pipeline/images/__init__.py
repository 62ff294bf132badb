"""The ``images`` stage: DICOM, JPG and PNG chest radiographs to 8-bit grayscale PNGs of one size.

Modules: ``config`` (the stage's settings), ``common`` (what every decoder returns, reject
problems, size rules, the percentile window), ``dicom`` (pydicom with its decoder plugins, the
modality LUT, the VOI LUT or window, MONOCHROME1), ``raster`` (JPG/PNG through Pillow, reduced-
resolution JPEG decoding), ``encode`` (antialiased resize and deterministic PNG bytes) and
``stage`` (paths, views, rejects: the map stage itself).
"""
