"""From a folder on disk to pixels and cases: the first step of every command.

Discovery walks a folder and classifies every entry; decoding turns one file's
bytes into RGB pixels (JPEG, PNG, BMP, TIFF, WEBP, DICOM) with its integrity
checks; DICOM series and NIfTI volumes are read from their headers and grouped
into cases (the unit of a verdict) with their slices in order and one display
window each. Nothing here knows about the model.
"""
